"""Combined margin (insightface; the ArcFace paper's combined margin): s * (cos(m1 theta + m2) - m3).

m1 is SphereFace's multiplicative angular margin, m2 ArcFace's additive angular margin and m3
CosFace's additive cosine margin; (1, m, 0) is ArcFace and (1, 0, m) is CosFace.
"""

from __future__ import annotations

import math

import torch

from otface.heads.base import HEADS, MarginHead


@HEADS.register("combined")
class CombinedMargin(MarginHead):
    """Target logit s * (cos(m1 theta_y + m2) - m3), insightface's ``margin_softmax`` defaults (1, 0.3, 0.2), s=64.

    Past theta_0 = (pi - m2) / m1, where m1 theta + m2 reaches pi, cos(m1 theta + m2) would grow
    again with theta. There the target falls back, as ArcFace's does, to the CosFace-like
    cos(theta_y) - m3 - p, with d = pi - theta_0 and p = max(d sin(d), 1 - cos(d)). For d <= 2.33,
    p = d sin(d): with m1 = 1, m3 = 0 (d = m2) this is exactly ArcFace's cos(theta) - m sin(m). The
    max makes the step at theta_0 go down for any d, so the target is monotone in theta_y. With
    theta_0 >= pi (m1 <= 1 - m2 / pi, as for CosFace) no fallback is needed. insightface's MXNet
    ``margin_softmax`` has no fallback (its target grows again past theta_0) and arcface_torch's
    ``CombinedMarginLoss`` handles only the ArcFace (m1 = 1, m3 = 0) and CosFace (m3 > 0, where it
    ignores m1 and m2) cases.

    The values and gradients match :class:`ArcFace` (straight_through=False; m <= 2.33) and
    :class:`CosFace` exactly in those cases. For m1 != 1, theta = atan2(sin, cos) keeps the
    gradients finite at cos = +-1.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, the logit scale.
        m1: multiplicative angular margin, > 0.
        m2: additive angular margin, in [0, pi).
        m3: additive cosine margin.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, m1: float = 1.0,
                 m2: float = 0.3, m3: float = 0.2) -> None:
        if m1 <= 0 or not 0 <= m2 < math.pi:
            raise ValueError(f"need m1 > 0 and 0 <= m2 < pi, got m1={m1}, m2={m2}")
        super().__init__(embedding_size, num_classes, scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        m1, m2, m3 = self.m1, self.m2, self.m3
        # sin(theta) from cos(theta); the clamp keeps the gradient finite at cos = +-1
        sin = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
        if m1 == 1.0:
            cos_a, sin_a = cos_target, sin
        else:
            angle = m1 * torch.atan2(sin, cos_target)
            cos_a, sin_a = torch.cos(angle), torch.sin(angle)
        phi = cos_a * math.cos(m2) - sin_a * math.sin(m2) - m3  # cos(m1 theta + m2) - m3
        theta_0 = (math.pi - m2) / m1
        if theta_0 >= math.pi:
            return phi
        d = math.pi * (1.0 - 1.0 / m1) + m2 / m1  # pi - theta_0, exactly m2 when m1 = 1
        penalty = max(d * math.sin(d), 1.0 - math.cos(d))  # 1 - cos(d): the step down to -1 - m3
        return torch.where(cos_target > math.cos(theta_0), phi, cos_target - (m3 + penalty))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m1={self.m1}, m2={self.m2}, m3={self.m3}"
