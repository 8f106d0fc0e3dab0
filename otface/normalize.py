"""L2 normalisation that stays finite at zero, shared by the OT costs and the hard-group mining."""

from __future__ import annotations

import torch
from torch import Tensor

# Added under the square root of the squared norm: a zero vector normalises to zero (cost 1 to
# everything) and its gradient stays finite, while for any real feature the change is ~1e-12.
NORM_EPS = 1e-6


def inverse_norm(x: Tensor) -> Tensor:
    """1 / sqrt(|x|^2 + NORM_EPS^2) over the last dimension: (..., d) -> (..., 1)."""
    return torch.rsqrt(x.square().sum(-1, keepdim=True) + NORM_EPS**2)
