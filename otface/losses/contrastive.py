"""Contrastive loss over the pairs of a batch (Hadsell, Chopra & LeCun 2006; DeepID2; SPEC §3).

    l_ij = 1/2 d_ij^2                       if y_i = y_j       # Hadsell Eq. 4; DeepID2 Eq. 2
         = 1/2 max(0, margin - d_ij)^2      otherwise
    L = mean over all pairs i < j of l_ij

with d_ij the L2 distance between L2-normalised embeddings, in [0, 2] (d = sqrt(2) for orthogonal
ones). The default margin 1 is the one of TensorFlow's ``contrastive_loss`` (which asks for
normalised embeddings) and of pytorch-metric-learning's ``neg_margin``: a negative pair is pushed
until its angle reaches 60 degrees (cos = 1/2), so that random, near-orthogonal pairs cost
nothing. Neither paper gives a value for normalised embeddings (DeepID2 learns its margin on
unnormalised features). A negative pair at distance 0 has no defined direction and gets no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from otface.losses.base import AUX_LOSSES
from otface.losses.checks import checked_batch, mean_or_zero
from otface.losses.distances import unit_sq_distances

_TINY_SQ_DISTANCE = 1e-12  # below it sqrt(d^2) is held (its gradient 1/(2d) would overflow)


@AUX_LOSSES.register("contrastive")
class ContrastiveLoss(nn.Module):
    """Mean of Hadsell's contrastive loss over all pairs i < j of the batch.

    Args:
        margin: the distance beyond which negative pairs cost nothing (1.0; see the module docstring).
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)

    def forward(self, embeddings: Tensor, labels: Tensor, head: nn.Module | None = None) -> Tensor:
        """(N, E) embeddings, (N,) labels -> scalar mean over the N(N-1)/2 pairs (0 when N < 2).
        ``head`` is not used."""
        x, labels = checked_batch(embeddings, labels)
        i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
        with torch.autocast(x.device.type, enabled=False):
            sq = unit_sq_distances(x)[i, j]
            pull = 0.5 * sq
            push = 0.5 * torch.relu(self.margin - sq.clamp_min(_TINY_SQ_DISTANCE).sqrt()).square()
            return mean_or_zero(torch.where(labels[i] == labels[j], pull, push))

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
