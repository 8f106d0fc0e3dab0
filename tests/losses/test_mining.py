import pytest
import torch

import otface.losses.mining as mining
from otface.losses import mine_hard_groups, unique_pairs


def batch(n, num_labels, dim=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(num_labels, (n,), generator=g)


def algorithm1(emb, labels, margin=0.0):
    """A literal transcription of Algorithm 1 (Eq. 1 as in Fig. 2), with the hardness of each group."""
    e = [v / v.norm() for v in emb]
    cos = [[float(a @ b) for b in e] for a in e]
    found = {}
    for a in range(len(e)):
        pos = [j for j in range(len(e)) if labels[j] == labels[a] and j != a]
        neg = [k for k in range(len(e)) if labels[k] != labels[a]]
        for p in pos:
            for n in neg:
                if cos[a][p] + margin < cos[a][n]:
                    found[(a, p, n)] = cos[a][n] - cos[a][p]
    return found


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.0, 0.2, -0.1])
def test_matches_algorithm_1(seed, margin):
    emb, labels = batch(20, 5, seed=seed)
    got = mine_hard_groups(emb, labels, margin=margin)
    assert got.dtype == torch.long and got.shape[1] == 3
    rows = [tuple(r) for r in got.tolist()]
    assert len(rows) == len(set(rows))
    assert set(rows) == set(algorithm1(emb, labels.tolist(), margin))
    assert rows == sorted(rows)


def test_float32_embeddings_and_unnormalised_scale():
    emb, labels = batch(16, 4, seed=7)
    scaled = emb * torch.linspace(0.1, 10, 16)[:, None]
    want = set(algorithm1(emb, labels.tolist()))
    assert {tuple(r) for r in mine_hard_groups(scaled.float(), labels).tolist()} == want


@pytest.mark.parametrize("cap", [1, 7, 50, 10_000])
def test_cap_keeps_the_hardest_first(cap):
    emb, labels = batch(24, 5, seed=3)
    ref = algorithm1(emb, labels.tolist())
    got = mine_hard_groups(emb, labels, max_groups=cap)
    assert len(got) == min(cap, len(ref))
    hardness = [ref[tuple(r)] for r in got.tolist()]  # every returned group is hard
    assert hardness == sorted(hardness, reverse=True)
    assert hardness == pytest.approx(sorted(ref.values(), reverse=True)[:cap])


def test_chunking_does_not_change_the_result(monkeypatch):
    emb, labels = batch(30, 4, seed=5)
    full, capped = mine_hard_groups(emb, labels), mine_hard_groups(emb, labels, max_groups=40)
    monkeypatch.setattr(mining, "_CHUNK_ELEMENTS", 31)  # one (anchor, positive) pair per chunk
    assert torch.equal(mine_hard_groups(emb, labels), full)
    assert torch.equal(mine_hard_groups(emb, labels, max_groups=40), capped)


def test_no_groups():
    # identical embeddings within a class, orthogonal across: every group is easy
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert mine_hard_groups(torch.eye(3)[labels], labels).shape == (0, 3)
    # all distinct labels: no positives; a single class: no negatives
    emb, _ = batch(5, 1)
    assert mine_hard_groups(emb, torch.arange(5)).shape == (0, 3)
    assert mine_hard_groups(emb, torch.zeros(5, dtype=torch.long), max_groups=3).shape == (0, 3)


def test_no_gradient():
    emb, labels = batch(12, 3)
    emb.requires_grad_()
    assert not mine_hard_groups(emb, labels).requires_grad


def test_unique_pairs_reconstructs_every_group():
    emb, labels = batch(24, 4, seed=11)
    groups = mine_hard_groups(emb, labels)
    pairs, ap, an = unique_pairs(groups)
    assert len(ap) == len(an) == len(groups)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)
    assert torch.equal(pairs[ap], torch.sort(groups[:, [0, 1]], dim=1).values)
    assert torch.equal(pairs[an], torch.sort(groups[:, [0, 2]], dim=1).values)
    # (i, j) and (j, i) are one problem, and every pair is used
    needed = {tuple(sorted(g[:2])) for g in groups.tolist()} | {tuple(sorted(g[::2])) for g in groups.tolist()}
    assert needed == {tuple(p) for p in pairs.tolist()}


def test_unique_pairs_empty():
    pairs, ap, an = unique_pairs(torch.empty(0, 3, dtype=torch.long))
    assert pairs.shape == (0, 2) and ap.shape == an.shape == (0,)


def test_errors():
    emb, labels = batch(6, 2)
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        mine_hard_groups(emb[0], labels)
    with pytest.raises(ValueError, match=r"labels must be \(\d+,\)"):
        mine_hard_groups(emb, labels[:5])
    with pytest.raises(TypeError, match="integer"):
        mine_hard_groups(emb, labels.float())
    with pytest.raises(ValueError, match="max_groups"):
        mine_hard_groups(emb, labels, max_groups=0)
    with pytest.raises(ValueError, match=r"\(H, 3\)"):
        unique_pairs(torch.zeros(4, 2, dtype=torch.long))
