"""ArcFace (Deng et al., CVPR 2019): additive angular margin, target logit s * cos(theta + m)."""

from __future__ import annotations

import math

import torch

from otface.heads.base import HEADS, MarginHead


def additive_angular_margin(cos_target: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """(N,) target cosines, a margin m (a number, or (N,) per sample) -> (N,) cos(theta + m).

    Where theta + m >= pi (cos theta <= cos(pi - m)) the target falls back to cos(theta) - m sin(m),
    so that it keeps decreasing in theta; a negative margin never reaches pi. A number is applied
    with Python floats, so every head with a fixed margin gets bit-identical values.
    """
    trig = torch if isinstance(margin, torch.Tensor) else math
    cos_m, sin_m = trig.cos(margin), trig.sin(margin)
    # sin(theta) from cos(theta); the clamp keeps the gradient finite at cos = +-1
    sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
    phi = cos_target * cos_m - sin * sin_m  # cos(theta + m)
    below_pi = (cos_target > trig.cos(math.pi - margin)) | (margin < 0)
    return torch.where(below_pi, phi, cos_target - margin * sin_m)


@HEADS.register("arcface")
class ArcFace(MarginHead):
    """s * cos(theta_y + m) for the target class, s * cos(theta_j) for the others (ArcFace Eq. 3).

    Where theta_y + m >= pi (cos theta_y <= cos(pi - m)), cos(theta_y + m) would grow again with
    theta_y; there the target falls back to cos(theta_y) - m * sin(m), as insightface's
    arcface_torch ``ArcFace`` (``cos - sin(pi - m) * m``). The fallback keeps the target logit
    decreasing in theta_y but is not continuous: at theta_y = pi - m it steps from -1 down to
    -cos(m) - m * sin(m).

    The gradient is the true one of this function. ``straight_through=True`` reproduces
    arcface_torch's ``CombinedMarginLoss``, which applies the margin under ``no_grad``: same values,
    but the gradient is that of s * cos(theta_y). (That class has no fallback, so its values differ
    from ours where theta_y > pi - m.)
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 straight_through: bool = False) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.margin = float(margin)
        self.straight_through = straight_through

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        out = additive_angular_margin(cos_target, self.margin)
        if self.straight_through:
            return cos_target + (out - cos_target).detach()
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.margin}, straight_through={self.straight_through}"
