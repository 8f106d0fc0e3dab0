"""DiscFace's minimum discrepancy loss (Kim et al., ACCV 2020; papers/discface.txt; SPEC §3).

    eps_i = z_i / |z_i| - w_{y_i} / |w_{y_i}|                      # Eq. 2, displacement vector
    L = mean_i ||eps_i - xi||_2                                    # Eq. 3, xi the displacement basis

The basis xi is one learnable vector of R^E. Algorithm 1 clips its norm to 0.05 inside the
forward pass, xi = b / |b| * min(|b|, 0.05) with b the stored parameter; we write the same map
as b * 0.05 / max(|b|, 0.05), which is also defined at b = 0 (there Algorithm 1's normalize(b)
has a zero gradient, so a zero-initialised basis would never move). The stored parameter is
never modified by the clip: while |b| > 0.05 its gradient only turns it.

Gradients reach the embeddings z, the class weights w_y (Algorithm 1 does not detach them, and
Eq. 3 writes the loss as a function of theta, w and xi, "jointly learned") and b. The weight
lambda of Eq. 4 (0.2 in the paper's experiments) is the trainer's, not this module's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otface.losses.base import AUX_LOSSES
from otface.losses.checks import checked_batch, mean_or_zero


@AUX_LOSSES.register("discface")
class DiscFaceLoss(nn.Module):
    """mean_i || z_i/|z_i| - w_{y_i}/|w_{y_i}| - xi ||_2 with the head's class weights w.

    Args:
        embedding_size: E.
        max_norm: the bound on |xi| (Algorithm 1: 0.05).

    Attributes:
        raw_basis: (E,) parameter b, initialised to zero; the basis used is :attr:`basis`.
    """

    def __init__(self, embedding_size: int, max_norm: float = 0.05) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"need embedding_size >= 1, got {embedding_size}")
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.embedding_size, self.max_norm = embedding_size, float(max_norm)
        self.raw_basis = nn.Parameter(torch.zeros(embedding_size))

    @property
    def basis(self) -> Tensor:
        """(E,) xi = b * max_norm / max(|b|, max_norm): b itself while |b| <= max_norm."""
        b = self.raw_basis
        return b * (self.max_norm / torch.linalg.vector_norm(b).clamp_min(self.max_norm))

    def forward(self, embeddings: Tensor, labels: Tensor, head: nn.Module | None = None) -> Tensor:
        """(N, E) embeddings, (N,) labels, the margin head (its ``weight`` (C, E)) -> scalar Eq. 3."""
        weight = getattr(head, "weight", None)
        if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[1] != self.embedding_size:
            raise ValueError(f"discface needs the margin head, whose weight is (C, {self.embedding_size}); "
                             f"got {type(head).__name__} with weight {getattr(weight, 'shape', None)}")
        x, labels = checked_batch(embeddings, labels, self.embedding_size, weight.shape[0])
        with torch.autocast(x.device.type, enabled=False):
            dtype = torch.promote_types(x.dtype, weight.dtype)
            eps = F.normalize(x.to(dtype), dim=1) - F.normalize(weight[labels].to(dtype), dim=1)  # Eq. 2
            return mean_or_zero(torch.linalg.vector_norm(eps - self.basis.to(dtype), dim=1))  # Eq. 3

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, max_norm={self.max_norm}"
