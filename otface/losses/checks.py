"""Input checks and reductions shared by the auxiliary losses."""

from __future__ import annotations

import torch
from torch import Tensor

from otface.batches import checked_labels


def checked_batch(
    embeddings: Tensor, labels: Tensor, embedding_size: int | None = None, num_classes: int | None = None
) -> tuple[Tensor, Tensor]:
    """Validate a batch for an auxiliary loss (:func:`otface.batches.checked_labels`).

    Args:
        embeddings: (N, E) float, with E = ``embedding_size`` when given.
        labels: (N,) integer, in [0, ``num_classes``) when given.

    Returns:
        The embeddings upcast to float32 at least (float64 stays float64) and the labels as int64.
    """
    labels = checked_labels(embeddings, labels, embedding_size, num_classes)
    return embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), labels


def mean_or_zero(values: Tensor) -> Tensor:
    """Mean of a 1-D tensor; 0 for an empty one, still connected to the graph."""
    return values.sum() / max(values.numel(), 1)
