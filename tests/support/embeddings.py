"""Embeddings for head tests: random ones plus some near their class weight or its opposite."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labelled_embeddings(head, n: int = 40, n_close: int = 0, n_opposite: int = 8, noise: float = 0.05,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, E) embeddings and (n,) labels for ``head`` (anything with ``num_classes``,
    ``embedding_size`` and ``weight``). The first ``n_close`` lie near their class weight's
    direction, the next ``n_opposite`` near its opposite (theta near pi, so theta + m > pi), each
    with N(0, noise^2) added per coordinate; the rest are N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, head.num_classes, (n,), generator=g)
    emb = torch.randn(n, head.embedding_size, generator=g)
    k = n_close + n_opposite
    w = F.normalize(head.weight.detach()[labels[:k]], dim=1)
    sign = torch.cat([torch.ones(n_close), -torch.ones(n_opposite)]).unsqueeze(1)
    emb[:k] = sign * w + noise * torch.randn(k, head.embedding_size, generator=g)
    return emb, labels
