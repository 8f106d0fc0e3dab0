"""Distances between embeddings that the pair and triplet losses share."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def unit_sq_distances(embeddings: Tensor) -> Tensor:
    """(N, E) -> (N, N) squared L2 distances |u_i - u_j|^2 = 2 - 2 cos_ij of the normalised
    embeddings u, clamped at 0, in the embeddings' dtype (call it outside autocast)."""
    u = F.normalize(embeddings, dim=1)
    return (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)
