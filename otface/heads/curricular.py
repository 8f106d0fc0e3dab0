"""CurricularFace (Huang et al., CVPR 2020): ArcFace's target plus adaptively re-weighted hard negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist

from otface.heads.arcface import ArcFace
from otface.heads.base import MarginHead


class CurricularFace(ArcFace):
    """Target s * T(theta_y) = s * cos(theta_y + m), with ArcFace's fallback past theta_y = pi - m;
    negatives s * cos_j, or s * cos_j * (t + cos_j) for the hard ones, cos_j > T(theta_y).

    t follows the target cosines: in training mode, each call sets
    t <- momentum * mean_i(cos theta_{y_i}) + (1 - momentum) * t (detached, t = 0 at start), and
    the re-weighting then uses this updated t, as the authors' code does. Early on t is near 0, so a
    hard negative with cos_j > 0 is damped (easy samples first); as t grows, hard ones weigh more.
    When ``torch.distributed`` is initialised the mean runs over the whole global batch (sum and
    count all-reduced), so every process holds the same t; the authors' code keeps one t per
    process, from its local batch. t is a buffer, so it is checkpointed with the head.

    Hard negatives are those above the target logit actually used, fallback included; the authors'
    code compares with cos(theta_y + m) without the fallback, which differs only for theta_y > pi - m.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, the logit scale.
        margin: m, the additive angular margin of the target.
        momentum: weight of the current batch in the moving average of t (the authors' 0.01).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 momentum: float = 0.01) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)
        self.momentum = float(momentum)
        self.register_buffer("t", torch.zeros(()))

    @torch.no_grad()
    def _update_t(self, cos_target: torch.Tensor) -> None:
        """Moving average of the (N,) target cosines, over all processes when distributed."""
        stats = torch.stack([cos_target.sum(), cos_target.new_tensor(cos_target.numel())])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        total, count = stats.to(self.t.dtype)
        updated = self.momentum * total / count.clamp_min(1) + (1 - self.momentum) * self.t
        self.t.copy_(torch.where(count > 0, updated, self.t))

    def adjust(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(cos.shape[0], device=cos.device)
        cos_target = cos[rows, labels]
        target = self.margin_cos(cos_target)
        if self.training:
            self._update_t(cos_target.detach())
        hard = cos > target.detach().unsqueeze(1)
        t = self.t.to(cos.dtype)
        return torch.where(hard, cos * (t + cos), cos).index_put((rows, labels), target)

    def extra_repr(self) -> str:
        return MarginHead.extra_repr(self) + f", margin={self.margin}, momentum={self.momentum}"
