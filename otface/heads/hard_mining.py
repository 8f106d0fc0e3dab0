"""HM-Softmax (MV-Softmax, Wang et al., AAAI 2020): the mean cross-entropy of the hardest samples.

A :class:`~otface.heads.mining.MiningHead` over any head: g = 1 on the hardest samples of the
batch, 0 elsewhere, and the mean taken over the kept ones.
"""

from __future__ import annotations

import math

import torch

from otface.heads.base import MarginHead
from otface.heads.mining import HEAD_WRAPPERS, MiningHead


def num_hardest(batch_size: int, ratio: float) -> int:
    """floor(ratio * N) samples, at least one (none for an empty batch); float noise such as
    0.29 * 100 = 28.999... is rounded away first."""
    return min(batch_size, max(1, math.floor(round(ratio * batch_size, 9))))


@HEAD_WRAPPERS.register("hm")
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
