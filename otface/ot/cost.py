"""Ground costs between point clouds (SPEC §1: C_ij = 1 - cos(m_1^i, m_2^j), Eq. 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from otface.normalize import inverse_norm


def unit_cosine_cost(xn: Tensor, yn: Tensor) -> Tensor:
    """1 - xn @ yn^T for already normalised points (P, n, d), (P, m, d) -> (P, n, m), in a single
    (P, n, m) allocation."""
    return torch.baddbmm(xn.new_ones(()), xn, yn.transpose(1, 2), alpha=-1.0)


def cosine_cost(x: Tensor, y: Tensor) -> Tensor:
    """Batched cosine-distance cost matrices.

    Args:
        x: (P, n, d) points of the first clouds.
        y: (P, m, d) points of the second clouds.

    Returns:
        (P, n, m) with C[p, i, j] = 1 - cos(x[p, i], y[p, j]), in [0, 2] up to rounding. Computed
        in float32 (float64 stays float64), also under autocast: an error of 1e-2 in C, as bf16
        would give, is a fifth of the default Sinkhorn eps.
    """
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"cosine_cost expects x (P, n, d) and y (P, m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.to(dtype), y.to(dtype)
        return unit_cosine_cost(x * inverse_norm(x), y * inverse_norm(y))
