"""CosFace (Wang et al., CVPR 2018) = AM-Softmax (Wang et al., SPL 2018): s * (cos(theta_y) - m)."""

from __future__ import annotations

import torch

from otface.heads.base import HEADS, MarginHead


@HEADS.register("cosface", "am_softmax")
class CosFace(MarginHead):
    """Additive cosine margin on the target logit: cos(theta_y) - m."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.margin = float(margin)

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.margin}"
