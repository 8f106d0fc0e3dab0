"""Plain softmax classifier (DeepID, Sun et al., CVPR 2014): logits W x + b, no normalisation, no margin."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otface.heads.base import HEADS, MarginHead, held_rows


@HEADS.register("softmax")
class Softmax(MarginHead):
    """Linear classifier on the raw embedding: logit_j = w_j . x + b_j, then cross-entropy.

    Neither features nor weights are normalised and there is no scale (``self.scale`` stays 1 and
    is unused); the head is a :class:`MarginHead` so that it plugs in wherever a head does, and
    its inherited :meth:`cosine` still gives the normalised cosines to losses that need them.

    Args:
        embedding_size: E, the embedding dimension.
        num_classes: C, the number of training identities.
        bias: learn a per-class bias b (the fully connected softmax layer of DeepID has one).

    Attributes:
        weight: (C, E) class weights, initialised N(0, 0.01^2) like every head.
        bias: (C,) zeros at start, or None when ``bias=False``.
    """

    class_tables = ("weight", "bias")

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(embedding_size, num_classes, scale=1.0)
        self.register_parameter("bias", nn.Parameter(torch.zeros(num_classes)) if bias else None)

    def scores(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N, E) -> (N, C) (or (N, C') for ``rows``) logits W x + b in float32 or wider; no
        margin or scale follows."""
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32)
        bias = None if self.bias is None else held_rows(self.bias, rows).to(dtype)
        return F.linear(embeddings.to(dtype), held_rows(self.weight, rows).to(dtype), bias)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, bias={self.bias is not None}"
