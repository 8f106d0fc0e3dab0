"""Margin-based softmax heads: logits s * f(cos theta) on L2-normalised features and weights.

A head subclass only says how the target logit's cosine is changed (:meth:`MarginHead.margin`);
normalisation, scaling, float32 upcasting, label checks and the cross-entropy live here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Base of the margin heads.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, the logit scale.

    Attributes:
        weight: (C, E) class centres (normalised when used).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 2:
            raise ValueError(f"need embedding_size >= 1 and num_classes >= 2, got {embedding_size}, {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be (N, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}); got range [{int(labels.min())}, {int(labels.max())}]"
            )

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N, C) cosines between normalised embeddings and class weights, in float32."""
        x = F.normalize(embeddings.float(), dim=1)
        w = F.normalize(self.weight.float(), dim=1)
        return x @ w.t()

    def margin(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted cosine of the target class; (N,) -> (N,). Identity here (NormFace)."""
        return cos_target

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E), (N,) -> (N, C) scaled, margin-adjusted logits that enter the cross-entropy."""
        self._check(embeddings, labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings)
            rows = torch.arange(cos.shape[0], device=cos.device)
            target = self.margin(cos[rows, labels])
            cos = cos.index_put((rows, labels), target)
            return self.scale * cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of :meth:`logits` (a scalar)."""
        return F.cross_entropy(self.logits(embeddings, labels), labels)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, scale={self.scale}"
