"""Input checks and reductions shared by the auxiliary losses."""

from __future__ import annotations

import torch
from torch import Tensor


def checked_batch(
    embeddings: Tensor, labels: Tensor, embedding_size: int | None = None, num_classes: int | None = None
) -> tuple[Tensor, Tensor]:
    """Validate a batch for an auxiliary loss.

    Args:
        embeddings: (N, E) float, with E = ``embedding_size`` when given.
        labels: (N,) integer, in [0, ``num_classes``) when given.

    Returns:
        The embeddings upcast to float32 at least (float64 stays float64) and the labels as int64.
    """
    if embeddings.ndim != 2 or (embedding_size is not None and embeddings.shape[1] != embedding_size):
        want = f"(N, {embedding_size})" if embedding_size is not None else "(N, E)"
        raise ValueError(f"embeddings must be {want}, got {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a float tensor, got {embeddings.dtype}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if num_classes is not None and labels.numel():
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got range [{lo}, {hi}]")
    return embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), labels.long()


def mean_or_zero(values: Tensor) -> Tensor:
    """Mean of a 1-D tensor; 0 for an empty one, still connected to the graph."""
    return values.sum() / max(values.numel(), 1)
