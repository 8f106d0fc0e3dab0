"""CurricularFace (Huang et al., CVPR 2020): ArcFace's target plus adaptively re-weighted hard negatives."""

from __future__ import annotations

import torch

from otface.heads.arcface import ArcFace
from otface.heads.base import HEADS, MarginHead


@HEADS.register("curricular")
class CurricularFace(ArcFace):
    """Target s * T(theta_y) = s * cos(theta_y + m), with ArcFace's fallback past theta_y = pi - m;
    negatives s * cos_j, or s * cos_j * (t + cos_j) for the hard ones, cos_j > T(theta_y).

    t follows the target cosines: in training mode, each call sets
    t <- momentum * mean_i(cos theta_{y_i}) + (1 - momentum) * t (detached, t = 0 at start), and
    the re-weighting then uses this updated t, as the authors' code does. Early on t is near 0, so a
    hard negative with cos_j > 0 is damped (easy samples first); as t grows, hard ones weigh more.
    Sharded over processes (:class:`~otface.heads.partial_fc.PartialFC`) the mean runs over the
    whole global batch, so every process holds the same t; the authors' code keeps one t per
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
    def observe(self, target: torch.Tensor) -> None:
        """t <- momentum * mean(cos theta_y) + (1 - momentum) * t over the (N,) target cosines."""
        if target.numel():
            self.t.copy_(self.momentum * target.mean().to(self.t.dtype) + (1 - self.momentum) * self.t)

    def reweight(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = self.t.to(cos.dtype)
        return torch.where(cos > target, cos * (t + cos), cos)

    def extra_repr(self) -> str:
        return MarginHead.extra_repr(self) + f", margin={self.margin}, momentum={self.momentum}"
