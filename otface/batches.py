"""The one validator of (embeddings, labels) batches, shared by the heads, the losses and the mining.

Shape and range mistakes are ValueErrors, wrong dtypes TypeErrors, each naming what was expected.
"""

from __future__ import annotations

import torch
from torch import Tensor


def checked_labels(embeddings: Tensor, labels: Tensor, embedding_size: int | None = None,
                   num_classes: int | None = None) -> Tensor:
    """Validate embeddings (N, E) float, E = ``embedding_size`` when given, and labels (N,)
    integer, in [0, ``num_classes``) when given; the labels as int64 (uint8 would index as a mask)."""
    if embeddings.ndim != 2 or (embedding_size is not None and embeddings.shape[1] != embedding_size):
        want = f"(N, {embedding_size})" if embedding_size is not None else "(N, E)"
        raise ValueError(f"embeddings must be {want}, got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"embeddings must be a float tensor, got {embeddings.dtype}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be ({embeddings.shape[0]},), one per embedding, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if num_classes is not None:
        check_label_range(labels, num_classes)
    return labels.long()


def check_label_range(labels: Tensor, num_classes: int) -> None:
    """ValueError unless every label lies in [0, num_classes) (one device synchronisation)."""
    if labels.numel():
        lo, hi = torch.stack(torch.aminmax(labels)).tolist()
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}); got range [{lo}, {hi}]")
