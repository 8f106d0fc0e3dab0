"""SphereFace (Liu et al., CVPR 2017): A-Softmax, a multiplicative angular margin psi(theta) = cos(m theta).

The weights are normalised but the feature norm is kept, and acts as the scale. Training starts
near the plain softmax and anneals towards A-Softmax, as the authors' Caffe layer
(``MarginInnerProduct``) does: the target logit is ||x|| (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda).
"""

from __future__ import annotations

import math
from numbers import Integral

import torch

from otface.heads.base import HEADS, MarginHead


def chebyshev_cos(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) from cos(theta), m >= 1, by the Chebyshev recurrence T_{k+1} = 2 c T_k - T_{k-1}.

    A polynomial in cos(theta): finite gradients everywhere, cos = +-1 included.
    """
    prev, cur = torch.ones_like(cos), cos
    for _ in range(m - 1):
        prev, cur = cur, 2 * cos * cur - prev
    return cur


def a_softmax_psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi / m, (k + 1) pi / m] (SphereFace Eq. 7).

    Monotonically decreasing and continuous on [0, pi], from 1 down to 1 - 2m; psi = cos for m = 1.
    k is counted from the thresholds cos(j pi / m), so no acos is needed.
    """
    thresholds = cos.new_tensor([math.cos(j * math.pi / m) for j in range(1, m)])
    k = (cos.unsqueeze(-1) <= thresholds).sum(-1).to(cos.dtype)
    return (1 - 2 * torch.remainder(k, 2)) * chebyshev_cos(cos, m) - 2 * k


@HEADS.register("sphereface", "a_softmax")
class SphereFace(MarginHead):
    """A-Softmax with the authors' lambda annealing; logits are not multiplied by a scale.

    Non-target logits are ||x|| cos(theta_j) = x . w_j / ||w_j||; the target logit is
    ||x|| (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda), with
    lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power). The defaults are those of the
    authors' training prototxt (m = 4, base 1000, gamma 0.12, power 1, lambda_min 5).

    ``iteration`` is a buffer, incremented before lambda is computed (so the first training batch
    uses iteration 1, as the Caffe layer does) on every logits call in training mode only; it is in
    the ``state_dict``, so a resumed run continues the annealing where it stopped.

    The gradient is the true one. The Caffe layer instead rescales its backward pass (a normalised
    gradient) and renormalises the weights in place without differentiating the normalisation.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        margin: m, an integer >= 1 (m = 1 is the "modified softmax" ||x|| cos(theta)).
        base, gamma, power, lambda_min: the lambda annealing schedule.
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0) -> None:
        if isinstance(margin, bool) or not isinstance(margin, Integral) or margin < 1:
            raise ValueError(f"SphereFace's margin must be an integer >= 1, got {margin!r}")
        super().__init__(embedding_size, num_classes, scale=1.0)  # unused: the feature norm is the scale
        self.margin = int(margin)
        self.base, self.gamma = float(base), float(gamma)
        self.power, self.lambda_min = float(power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def annealing_lambda(self) -> torch.Tensor:
        """Scalar lambda for the current ``iteration`` (float64, on the buffer's device)."""
        it = self.iteration.double()
        return (self.base * (1 + self.gamma * it) ** -self.power).clamp_min(self.lambda_min)

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        lam = self.annealing_lambda().to(cos_target.dtype)
        return (lam * cos_target + a_softmax_psi(cos_target, self.margin)) / (1 + lam)

    def observe(self, target: torch.Tensor) -> None:
        self.iteration.add_(1)

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 1) feature norms ||x|| (float32 or wider): the feature norm is the scale."""
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32)
        return embeddings.to(dtype).norm(dim=1, keepdim=True)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, margin={self.margin}, "
                f"base={self.base:g}, gamma={self.gamma:g}, power={self.power:g}, lambda_min={self.lambda_min:g}")
