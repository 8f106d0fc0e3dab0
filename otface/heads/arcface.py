"""ArcFace (Deng et al., CVPR 2019): additive angular margin, target logit s * cos(theta + m)."""

from __future__ import annotations

import math

import torch

from otface.heads.base import MarginHead


class ArcFace(MarginHead):
    """s * cos(theta_y + m) for the target class, s * cos(theta_j) for the others.

    Where theta + m would pass pi, cos(theta + m) stops being monotone in theta; as insightface
    does, the target then falls back to cos(theta) - m * sin(m) (continuous at theta = pi - m).
    The gradient is the true one; ``straight_through=True`` reproduces arcface_torch, which
    applies the margin under no_grad so that the gradient is that of s * cos(theta).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 straight_through: bool = False) -> None:
        super().__init__(embedding_size, num_classes, scale)
        self.m = float(margin)
        self.straight_through = straight_through

    def margin(self, cos_target: torch.Tensor) -> torch.Tensor:
        cos_m, sin_m = math.cos(self.m), math.sin(self.m)
        # sin(theta) from cos(theta); the clamp keeps the gradient finite at cos = +-1
        sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
        phi = cos_target * cos_m - sin * sin_m  # cos(theta + m)
        fallback = cos_target - self.m * sin_m
        out = torch.where(cos_target > math.cos(math.pi - self.m), phi, fallback)
        if self.straight_through:
            return cos_target + (out - cos_target).detach()
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.m}, straight_through={self.straight_through}"
