"""Mining-based softmax (MV-Softmax, Wang et al., AAAI 2020): per-sample losses -g(p_y) log p_y over any head.

:class:`MiningHead` wraps a built head and re-weights the per-sample cross-entropy of its logits.
:class:`HardMining` is HM-Softmax: g = 1 on the hardest samples of the batch, 0 elsewhere, and the
mean taken over the kept ones; :class:`otface.heads.focal.Focal` is F-Softmax, g = (1 - p_y)^gamma.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from otface.heads.base import MarginHead


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


def num_hardest(batch_size: int, ratio: float) -> int:
    """floor(ratio * N) samples, at least one (none for an empty batch); float noise such as
    0.29 * 100 = 28.999... is rounded away first."""
    return min(batch_size, max(1, math.floor(round(ratio * batch_size, 9))))


class HardMining(MiningHead):
    """HM-Softmax: the mean cross-entropy of the hardest ``ratio`` of the batch only.

    The hardest are the floor(ratio * N) samples (at least one) with the largest cross-entropy of
    the wrapped head's logits, margin included, as in the MV-Softmax authors' code
    (xiaoboCASIA/SV-X-Softmax ``loss.py``, ``loss_type='HardMining'``, whose ``save_rate=0.9`` is
    the default here; it keeps none when ratio * N < 1). The selection is not differentiated; the
    other samples get no gradient. Ties at the cut keep the lower batch index (a stable sort; the
    authors' ``argsort`` leaves ties in any order). With the head sharded over processes
    (:class:`~otface.heads.partial_fc.PartialFC`) the hardest of the global batch are kept; the
    authors' code keeps the hardest of each process's own batch.

    Args:
        head: the head to wrap.
        ratio: the fraction of the batch kept, in (0, 1]; 1 is the plain mean cross-entropy.
    """

    def __init__(self, head: MarginHead, ratio: float = 0.9) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"HM-Softmax's ratio must lie in (0, 1], got {ratio!r}")
        super().__init__(head)
        self.ratio = float(ratio)

    def reduce(self, ce: torch.Tensor) -> torch.Tensor:
        order = torch.sort(ce.detach(), descending=True, stable=True).indices
        return ce[order[:num_hardest(ce.shape[0], self.ratio)]].mean()

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"
