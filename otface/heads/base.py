"""Margin-based softmax heads: logits s * f(cos theta) on L2-normalised features and weights.

A head subclass says how the cosine of the target class is changed (:meth:`MarginHead.margin_cos`)
and, when negatives change too, how they are re-weighted given the target (:meth:`MarginHead.reweight`);
normalisation, scaling, float32 upcasting, label checks and the cross-entropy live here.

The logits are written column-wise, as a function of the class scores held, the targets' scores and
where the targets sit (:meth:`MarginHead.adjust_held`), so that the same code serves the full head and
a shard of its classes (:class:`otface.heads.partial_fc.PartialFC`, which supplies the targets'
scores of classes held by other processes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otface.batches import checked_labels
from otface.registry import Registry

HEADS: Registry["MarginHead"] = Registry("head")  # heads register where they are defined: @HEADS.register(name)


def held_rows(table: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The rows ``rows`` of a class-indexed (C, ...) table, or all of it for None."""
    return table if rows is None else table.index_select(0, rows)


class MarginHead(nn.Module):
    """Base of the margin heads; as it stands, NormFace's s * cos(theta) for every class.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        scale: s, the logit scale.

    Attributes:
        weight: (C, E) class centres, initialised N(0, 0.01^2) as insightface's partial FC;
            normalised when used.
        class_tables: names of the parameters indexed by class (row j belongs to class j), which a
            sharded head splits between processes.
    """

    class_tables: tuple[str, ...] = ("weight",)

    def __init__(self, embedding_size: int, num_classes: int, scale: float) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"need embedding_size >= 1 and num_classes >= 1, got {embedding_size}, {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                    check_range: bool = True) -> torch.Tensor:
        """Validate the batch (:func:`otface.batches.checked_labels`) and, with ``check_range``, the
        label range (``num_classes``: the head's); the labels as int64."""
        classes = (self.num_classes if num_classes is None else num_classes) if check_range else None
        return checked_labels(embeddings, labels, self.embedding_size, classes)

    def cosine(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N, E) -> (N, C) cosines of normalised embeddings and class weights; with ``rows``
        ((C',) int64 indices of weight rows), (N, C') for those classes only.

        Computed in float32 at least (half / bfloat16 inputs are upcast; float64 stays float64).
        """
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32)
        x = F.normalize(embeddings.to(dtype), dim=1)
        w = F.normalize(held_rows(self.weight, rows).to(dtype), dim=1)
        return x @ w.t()

    def scores(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N, E) -> (N, C) (or (N, C') for ``rows``) the class scores the margin acts on: the
        cosines (:meth:`cosine`) here."""
        return self.cosine(embeddings, rows)

    def logit_scale(self, embeddings: torch.Tensor) -> float | torch.Tensor:
        """The factor from adjusted scores to logits: s here; a head may return (N, 1) per sample."""
        return self.scale

    def observe(self, target: torch.Tensor) -> None:
        """Update the head's state (a running statistic, an iteration count) from the (N,) detached
        target scores of the whole batch; called once per training-mode call. Nothing here."""

    def margin_cos(self, cos_target: torch.Tensor) -> torch.Tensor:
        """(N,) cosines of the target classes -> (N,) margin-adjusted cosines. Identity here."""
        return cos_target

    def reweight(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, C') class scores, (N, 1) detached margin-adjusted targets -> (N, C') re-weighted scores; only the
        negatives' values matter (the targets' are replaced). Elementwise, so that it applies to any
        subset of the classes. Identity here; CurricularFace and MV-Softmax override it."""
        return cos

    def adjust_held(self, cos: torch.Tensor, target_cos: torch.Tensor, rows: torch.Tensor,
                    cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adjusted scores of the classes held, before the scale.

        Args:
            cos: (N, C') scores of the classes held (all C, or a shard).
            target_cos: (N,) the target class's score of every sample, wherever it is held.
            rows, cols: (M,) int64 positions in ``cos`` of the targets held here.

        Returns:
            (N, C') adjusted scores, the targets at (rows, cols); (N,) the adjusted targets.
        """
        if self.training:
            self.observe(target_cos.detach())
        target = self.margin_cos(target_cos)
        out = self.reweight(cos, target.detach().unsqueeze(1))
        return out.index_put((rows, cols), target[rows]), target

    def adjust(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, C) cosines, (N,) int64 labels -> (N, C) adjusted cosines, before the scale."""
        rows = torch.arange(cos.shape[0], device=cos.device)
        return self.adjust_held(cos, cos[rows, labels], rows, labels)[0]

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E) embeddings, (N,) labels -> (N, C) scaled, margin-adjusted logits (float32 or wider).

        Autocast is disabled inside, so the margin and the scale act on full-precision cosines.
        """
        labels = self.check_batch(embeddings, labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.logit_scale(embeddings) * self.adjust(self.scores(embeddings), labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E), (N,) -> scalar mean cross-entropy of :meth:`logits`."""
        return F.cross_entropy(self.logits(embeddings, labels), labels.long())

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, scale={self.scale}"
