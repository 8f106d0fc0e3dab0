"""Hard sample group mining (papers/otface.txt Algorithm 1, Eq. 1; SPEC §1).

A triple (a, p, n) of a mini-batch is a hard group when y_p = y_a, p != a, y_n != y_a and the
negative is closer to the anchor than the positive in cosine similarity (Fig. 2; the prose's
"cosine distance ... smaller" contradicts the figure, SPEC §1 follows the figure):

    cos(f_a, f_p) + margin < cos(f_a, f_n)                         # Eq. 1, margin = 0 in the paper

Algorithm 1 is a triple loop over anchors, positives and negatives; here the (anchor, positive)
pairs are listed once and each is compared against all samples in one vectorised step, in chunks
of pairs so that memory stays O(chunk * N) (plus the output) for any batch size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from otface.batches import checked_labels
from otface.normalize import inverse_norm

_CHUNK_ELEMENTS = 1 << 22  # (positive pair, sample) comparisons per chunk


def _merge_hardest(best: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The k largest hardness values of both (hardness (G,), groups (G, 3)), largest first; ties
    keep the earlier group (a stable sort over best-then-new, both in mining order)."""
    hardness, groups = torch.cat([best[0], new[0]]), torch.cat([best[1], new[1]])
    order = torch.sort(hardness, descending=True, stable=True).indices[:k]
    return hardness[order], groups[order]


@torch.no_grad()
def mine_hard_groups(
    embeddings: Tensor, labels: Tensor, max_groups: int | None = None, margin: float = 0.0
) -> Tensor:
    """Hard sample groups of a mini-batch (Algorithm 1).

    Args:
        embeddings: (N, E) embeddings f(x_i) (used detached, compared in float32 or float64).
        labels: (N,) integer identity labels.
        max_groups: None keeps every hard group, ordered by (anchor, positive, negative); an
            integer k >= 1 keeps the k hardest, hardness cos(a, n) - cos(a, p) largest first.
        margin: a group is hard when cos(a, p) + margin < cos(a, n).

    Returns:
        (H, 3) long tensor of (anchor, positive, negative) indices, on the embeddings' device.
    """
    checked_labels(embeddings, labels)
    if max_groups is not None and (isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1):
        raise ValueError(f"max_groups must be None or an integer >= 1, got {max_groups!r}")
    emb = embeddings.detach()
    emb = emb.to(torch.promote_types(emb.dtype, torch.float32))
    emb = emb * inverse_norm(emb)
    sim = emb @ emb.T  # (N, N) cosine similarities
    same = labels[:, None] == labels[None, :]
    negative = ~same
    same.fill_diagonal_(False)
    pos_pairs = same.nonzero()  # (Q, 2) (a, p), sorted by a then p
    device = embeddings.device
    empty = torch.empty(0, 3, dtype=torch.long, device=device)
    best = (sim.new_empty(0), empty)
    found = []
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(labels)))
    for start in range(0, len(pos_pairs), chunk):
        a, p = pos_pairs[start : start + chunk].unbind(1)
        anchor_sim = sim[a]  # (c, N): cos(a, n) for every n
        hard = negative[a] & (anchor_sim > (sim[a, p] + margin)[:, None])  # Eq. 1
        row, n = hard.nonzero().unbind(1)
        groups = torch.stack([a[row], p[row], n], 1)
        if max_groups is None:
            found.append(groups)
        else:
            best = _merge_hardest(best, (anchor_sim[row, n] - sim[a[row], p[row]], groups), max_groups)
    if max_groups is not None:
        return best[1]
    return torch.cat(found) if found else empty


def unique_pairs(groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct OT problems of hard groups.

    OT under the symmetric cosine cost with uniform marginals is symmetric (exactly at
    convergence), so (i, j) and (j, i) are one problem, stored as (min, max).

    Args:
        groups: (H, 3) long (anchor, positive, negative) indices.

    Returns:
        pairs (Q, 2) long, sorted; ap_index (H,) and an_index (H,) with
        pairs[ap_index[h]] = sorted(a_h, p_h) and pairs[an_index[h]] = sorted(a_h, n_h).
    """
    if groups.ndim != 2 or groups.shape[1] != 3:
        raise ValueError(f"groups must be (H, 3), got shape {tuple(groups.shape)}")
    both = torch.cat([groups[:, [0, 1]], groups[:, [0, 2]]])  # (2H, 2): (a, p) then (a, n)
    both = torch.sort(both, dim=1).values
    pairs, inverse = torch.unique(both, dim=0, return_inverse=True)
    return pairs, inverse[: len(groups)], inverse[len(groups) :]
