"""Mining-based softmax (MV-Softmax, Wang et al., AAAI 2020): per-sample losses -g(p_y) log p_y over any head.

:class:`MiningHead` wraps a built head and re-weights the per-sample cross-entropy of its logits:
:class:`~otface.heads.hard_mining.HardMining` is HM-Softmax, :class:`~otface.heads.focal.Focal`
is F-Softmax, g = (1 - p_y)^gamma.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otface.heads.base import MarginHead
from otface.registry import Registry

HEAD_WRAPPERS: Registry["MiningHead"] = Registry("head wrapper")  # MiningHead(head, **params) by name


class MiningHead(nn.Module):
    """A head whose loss re-weights the per-sample cross-entropy of the head it wraps.

    The wrapped head is a submodule (its weight and state buffers are in this module's
    ``state_dict`` under ``head.``); :attr:`weight`, :meth:`cosine` and :meth:`logits` are the
    wrapped head's, so a state update of that head (a running statistic, an iteration count)
    happens once per :meth:`forward`, as without the wrapper.

    Args:
        head: the head to wrap, e.g. an :class:`otface.heads.ArcFace`.
    """

    def __init__(self, head: MarginHead) -> None:
        super().__init__()
        self.head = head

    @property
    def weight(self) -> nn.Parameter:
        """(C, E) class weights: the wrapped head's Parameter itself."""
        return self.head.weight

    @property
    def embedding_size(self) -> int:
        return self.head.embedding_size

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N, C) cosines of the wrapped head."""
        return self.head.cosine(embeddings)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E), (N,) -> (N, C) logits of the wrapped head (float32 or wider)."""
        return self.head.logits(embeddings, labels)

    def reduce(self, ce: torch.Tensor) -> torch.Tensor:
        """(N,) per-sample cross-entropies -log p_y -> scalar loss."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, E), (N,) -> scalar loss :meth:`reduce` of the per-sample cross-entropies of :meth:`logits`."""
        logits = self.logits(embeddings, labels)
        with torch.autocast(logits.device.type, enabled=False):
            return self.reduce(F.cross_entropy(logits, labels.long(), reduction="none"))
