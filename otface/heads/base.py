"""Margin-based softmax heads: logits s * f(cos theta) on L2-normalised features and weights.

A head subclass says how the cosine of the target class is changed (:meth:`MarginHead.margin_cos`)
or, when negatives change too, how the whole cosine matrix is (:meth:`MarginHead.adjust`);
normalisation, scaling, float32 upcasting, label checks and the cross-entropy live here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Base of the margin heads; as it stands, NormFace's s * cos(theta) for every class.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, the logit scale.

    Attributes:
        weight: (C, E) class centres, initialised N(0, 0.01^2) as insightface's partial FC;
            normalised when used.
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

    def _checked_labels(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Validate the shapes and the label range; the labels as int64 (uint8 would index as a mask)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must be (N, {self.embedding_size}), got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
        if labels.numel():
            lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one device sync
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}); got range [{lo}, {hi}]")
        return labels.long()

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N, C) cosines of normalised embeddings and class weights.

        Computed in float32 at least (half / bfloat16 inputs are upcast; float64 stays float64).
        """
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32)
        x = F.normalize(embeddings.to(dtype), dim=1)
        w = F.normalize(self.weight.to(dtype), dim=1)
        return x @ w.t()

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        """(N,) cosines of the target classes -> (N,) margin-adjusted cosines. Identity here."""
        return cos_target

    def adjust(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, C) cosines, (N,) int64 labels -> (N, C) adjusted cosines, before the scale.

        Here only the target column changes, through :meth:`margin_cos`. Heads that also re-weight
        negatives (CurricularFace, MV-Softmax) override this; a head with state (a running
        statistic, an iteration count) updates it here, and only in training mode.
        """
        rows = torch.arange(cos.shape[0], device=cos.device)
        return cos.index_put((rows, labels), self.margin_cos(cos[rows, labels]))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E) embeddings, (N,) labels -> (N, C) scaled, margin-adjusted logits (float32 or wider).

        Autocast is disabled inside, so the margin and the scale act on full-precision cosines.
        """
        labels = self._checked_labels(embeddings, labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.scale * self.adjust(self.cosine(embeddings), labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E), (N,) -> scalar mean cross-entropy of :meth:`logits`."""
        return F.cross_entropy(self.logits(embeddings, labels), labels.long())

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, scale={self.scale}"
