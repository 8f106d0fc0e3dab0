"""Triplet loss with in-batch mining (FaceNet, Schroff et al. 2015; Hermans et al. 2017; SPEC §3).

    L = mean over the mined triplets (a, p, n) of [d(a, p) - d(a, n) + margin]_+      # FaceNet Eq. 2

with d the squared L2 distance between L2-normalised embeddings, y_p = y_a, p != a, y_n != y_a.

- ``semi_hard`` (FaceNet section 3.2): one triplet per anchor-positive pair; its negative is the
  closest one farther than the positive, d(a, p) < d(a, n) (when d(a, n) < d(a, p) + margin it is
  a semi-hard negative of FaceNet, otherwise the hinge is 0). When no negative is farther than
  the positive, the farthest negative is taken, as TensorFlow's ``triplet_semihard_loss`` does.
- ``batch_hard`` (Hermans et al.): one triplet per anchor, its farthest positive and its closest
  negative.

Pairs or anchors without any positive or negative in the batch form no triplet; with no triplet
at all the loss is a zero still connected to the graph. The mining runs on detached distances;
the gradient flows through d(a, p) and d(a, n) of the mined triplets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from otface.losses.base import AUX_LOSSES
from otface.losses.checks import checked_batch, mean_or_zero
from otface.losses.distances import unit_sq_distances

MINING = ("semi_hard", "batch_hard")


def semi_hard_triplets(dist: Tensor, same: Tensor) -> Tensor:
    """(N, N) detached distances, (N, N) same-label mask -> (T, 3) long (anchor, positive, negative),
    one per anchor-positive pair whose anchor has a negative (see the module docstring)."""
    n = len(dist)
    num_neg = (~same).sum(1)
    neg_sorted, neg_order = dist.masked_fill(same, torch.inf).sort(dim=1)  # negatives first, ascending
    first_farther = torch.searchsorted(neg_sorted, dist.contiguous(), right=True)  # (a, p): first d(a, n) > d(a, p)
    farthest = (num_neg - 1).clamp_min(0)[:, None].expand(n, n)
    column = torch.where(first_farther < num_neg[:, None], first_farther, farthest)
    valid = same & ~torch.eye(n, dtype=torch.bool, device=dist.device) & (num_neg > 0)[:, None]
    a, p = valid.nonzero().unbind(1)
    return torch.stack([a, p, neg_order[a, column[a, p]]], 1)


def batch_hard_triplets(dist: Tensor, same: Tensor) -> Tensor:
    """(N, N) detached distances, (N, N) same-label mask -> (T, 3) long (anchor, farthest positive,
    closest negative), one per anchor that has both."""
    if not len(dist):  # argmax has nothing to reduce
        return torch.empty(0, 3, dtype=torch.long, device=dist.device)
    positive = same & ~torch.eye(len(dist), dtype=torch.bool, device=dist.device)
    hardest_pos = dist.masked_fill(~positive, -torch.inf).argmax(1)
    hardest_neg = dist.masked_fill(same, torch.inf).argmin(1)
    (a,) = (positive.any(1) & ~same.all(1)).nonzero(as_tuple=True)
    return torch.stack([a, hardest_pos[a], hardest_neg[a]], 1)


@AUX_LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """FaceNet's triplet loss on the triplets mined in the batch.

    Args:
        margin: alpha of FaceNet (0.2).
        mining: "semi_hard" (FaceNet) or "batch_hard" (Hermans et al.).
    """

    def __init__(self, margin: float = 0.2, mining: str = "semi_hard") -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.mining = float(margin), mining

    def mine(self, dist: Tensor, labels: Tensor) -> Tensor:
        """(N, N) distances, (N,) labels -> (T, 3) long triplets (anchor, positive, negative)."""
        same = labels[:, None] == labels[None, :]
        select = semi_hard_triplets if self.mining == "semi_hard" else batch_hard_triplets
        return select(dist.detach(), same)

    def forward(self, embeddings: Tensor, labels: Tensor, head: nn.Module | None = None) -> Tensor:
        """(N, E) embeddings, (N,) labels -> scalar mean hinge over the mined triplets. ``head`` is
        not used."""
        x, labels = checked_batch(embeddings, labels)
        with torch.autocast(x.device.type, enabled=False):
            dist = unit_sq_distances(x)
            a, p, n = self.mine(dist, labels).unbind(1)
            return mean_or_zero(torch.relu(dist[a, p] - dist[a, n] + self.margin))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}"
