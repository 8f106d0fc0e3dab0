"""MV-Softmax (Wang et al., AAAI 2020): a margin target plus re-weighted mis-classified negatives."""

from __future__ import annotations

import math
from typing import Any

import torch

from otface.heads.arcface import ArcFace
from otface.heads.base import HEADS, MarginHead
from otface.heads.cosface import CosFace


class MVSoftmax(MarginHead):
    """Mis-classified vector guided softmax over the target of the margin head it is mixed with.

    Target f(m, theta_y) (the margin head's :meth:`margin_cos`). A negative class k is
    mis-classified when cos_k > f(m, theta_y) (the paper's indicator I_k = 1; equality is not);
    its cosine becomes cos_k + t (the fixed weight function h = e^{s t}, MV-X-Softmax-f) or
    (t + 1) cos_k + t (the adaptive one, h = e^{s t (cos_k + 1)}, MV-X-Softmax-a). Other negatives
    keep cos_k. The class mixed in after this one supplies f and ``margin``.

    The comparison uses the target actually used, fallback included; the authors' code compares
    with cos(theta_y + m) without a fallback, which differs only where theta_y > pi - m.

    Args:
        t: the re-weighting parameter, >= 0 (0 is the plain margin head).
        adaptive: the adaptive weight (t + 1) cos_k + t instead of the fixed cos_k + t.
    """

    def __init__(self, *args: Any, t: float, adaptive: bool, **kwargs: Any) -> None:
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"t must be finite and >= 0, got {t!r}")
        super().__init__(*args, **kwargs)
        self.t = float(t)
        self.adaptive = bool(adaptive)

    def reweight(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        misclassified = cos > target  # I_k = 1
        weighted = (self.t + 1.0) * cos + self.t if self.adaptive else cos + self.t  # adaptive / fixed h
        return torch.where(misclassified, weighted, cos)

    def extra_repr(self) -> str:
        return MarginHead.extra_repr(self) + f", margin={self.margin}, t={self.t}, adaptive={self.adaptive}"


@HEADS.register("mv_am")
class MVAMSoftmax(MVSoftmax, CosFace):
    """MV-AM-Softmax: target cos(theta_y) - m (AM-Softmax / CosFace), mis-classified negatives re-weighted."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 32.0, margin: float = 0.35,
                 t: float = 0.2, adaptive: bool = True) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, t=t, adaptive=adaptive)


@HEADS.register("mv_arc")
class MVArcSoftmax(MVSoftmax, ArcFace):
    """MV-Arc-Softmax: target cos(theta_y + m) with ArcFace's fallback, mis-classified negatives re-weighted."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 32.0, margin: float = 0.5,
                 t: float = 0.2, adaptive: bool = True) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, t=t, adaptive=adaptive)
