"""Focal loss (Lin et al., ICCV 2017) over any head: F-Softmax of MV-Softmax (AAAI 2020)."""

from __future__ import annotations

import math

import torch

from otface.heads.base import MarginHead
from otface.heads.mining import HEAD_WRAPPERS, MiningHead


@HEAD_WRAPPERS.register("focal")
class Focal(MiningHead):
    """mean_i (1 - p_i)^gamma * (-log p_i), p_i the softmax probability of the target class under
    the wrapped head's logits (focal loss Eq. 4; not the alpha-balanced Eq. 5; MV-Softmax's
    g(p_y) = (1 - p_y)^gamma). gamma = 0 is the plain mean cross-entropy.

    The gradient runs through the weight (1 - p_i)^gamma as well, as in the focal loss paper and
    the MV-Softmax authors' code (xiaoboCASIA/SV-X-Softmax ``loss.py``, ``loss_type='FocalLoss'``,
    ``gamma=2.0``).

    Args:
        head: the head to wrap.
        gamma: the focusing parameter, >= 0 (the focal loss paper's best, 2).
    """

    def __init__(self, head: MarginHead, gamma: float = 2.0) -> None:
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"focal loss's gamma must be finite and >= 0, got {gamma!r}")
        super().__init__(head)
        self.gamma = float(gamma)

    def reduce(self, ce: torch.Tensor) -> torch.Tensor:
        one_minus_p = -torch.expm1(-ce)  # 1 - p_y, accurate for easy samples
        # floored at the smallest normal number: where p_y rounds to 1, (1 - p)^(gamma - 1) would be
        # inf for gamma < 1 and give a NaN gradient; the true gradient there is ~0 anyway
        weight = one_minus_p.clamp_min(torch.finfo(ce.dtype).tiny) ** self.gamma
        return (weight * ce).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"
