import numpy as np
import pytest
import torch

from otface.losses import OTLoss, OTLossOutput, mine_hard_groups
from support.sinkhorn import reference_sinkhorn

EPS, ITERS = 0.1, 40
PLAIN = {"tol": None, "omega": 1.0}  # plain Sinkhorn for a fixed ITERS, as the reference


def reference_ot(m1: np.ndarray, m2: np.ndarray, eps: float, iters: int) -> float:
    """Entropic OT value <P, C> between two (C, h, w) feature maps, float64 kernel-domain Sinkhorn
    (Eq. 6-8) on the cosine distance between their h*w points."""
    x, y = m1.reshape(m1.shape[0], -1).T, m2.reshape(m2.shape[0], -1).T
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return reference_sinkhorn(1.0 - x @ y.T, eps, iters)[0]


def inputs(n=16, classes=4, channels=8, hw=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, channels, hw, hw, generator=g)
    emb = torch.randn(n, 5, generator=g)
    labels = torch.arange(n) % classes
    return maps.requires_grad_(), emb, labels


def brute_force(maps, groups, margin, iters, canonical):
    """Eq. 9 group by group; canonical: solve OT(M(i), M(j)) with i < j, as OTLoss does."""
    fm = maps.detach().double().numpy()

    def ot(i, j):
        i, j = (min(i, j), max(i, j)) if canonical else (i, j)
        return reference_ot(fm[i], fm[j], EPS, iters)

    return sum(max(ot(a, p) - ot(a, n) + margin, 0.0) for a, p, n in groups)


@pytest.mark.parametrize("iters,canonical,rel", [(ITERS, True, 1e-5), (400, False, 1e-5)])
def test_value_matches_brute_force(iters, canonical, rel):
    # after finitely many iterations Sinkhorn is not exactly symmetric in its two clouds; at
    # convergence it is, so solving each unordered pair once is exact there
    maps, emb, labels = inputs(seed=1)
    out = OTLoss(eps=EPS, iters=iters, margin=0.05, **PLAIN)(maps, emb, labels)
    assert isinstance(out, OTLossOutput)
    groups = mine_hard_groups(emb, labels).tolist()
    assert out.num_groups == len(groups) > 0
    pairs = {frozenset((a, p)) for a, p, _ in groups} | {frozenset((a, n)) for a, _, n in groups}
    assert out.num_pairs == len(pairs)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(brute_force(maps, groups, 0.05, iters, canonical), rel=rel)


def test_mean_is_sum_over_groups():
    maps, emb, labels = inputs(seed=2)
    total = OTLoss(eps=EPS, iters=ITERS, **PLAIN)(maps, emb, labels)
    mean = OTLoss(eps=EPS, iters=ITERS, **PLAIN, reduction="mean")(maps, emb, labels)
    assert mean.loss.item() == pytest.approx(total.loss.item() / total.num_groups, rel=1e-6)


@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
def test_chunk_size_invariance(grad):
    maps, emb, labels = inputs(seed=3)
    results = []
    for chunk in (1, 7, 10_000):
        out = OTLoss(eps=EPS, iters=ITERS, **PLAIN, grad=grad, chunk_size=chunk)(maps, emb, labels)
        (g,) = torch.autograd.grad(out.loss, maps)
        results.append((out.loss, g))
    for loss, g in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        torch.testing.assert_close(g, results[0][1])


def test_gradient_reaches_only_the_maps_of_active_groups():
    maps, emb, labels = inputs(n=24, classes=6, seed=4)
    emb.requires_grad_()
    out = OTLoss(eps=EPS, iters=ITERS, **PLAIN, max_groups=6)(maps, emb, labels)
    out.loss.backward()
    assert emb.grad is None  # mining is detached
    groups = mine_hard_groups(emb, labels, max_groups=6).tolist()
    active = [g for g in groups if brute_force(maps, [g], 0.0, ITERS, True) > 0]
    assert 0 < len(active) < len(groups)
    involved = {i for g in active for i in g}
    per_sample = maps.grad.abs().sum((1, 2, 3))
    assert {i for i in range(len(labels)) if per_sample[i] > 0} == involved


def test_inactive_hinge_gives_no_gradient():
    maps, emb, labels = inputs(seed=5)
    out = OTLoss(eps=EPS, iters=ITERS, **PLAIN, margin=-10.0)(maps, emb, labels)  # every hinge is at 0
    assert out.num_groups > 0 and out.loss.item() == 0.0
    out.loss.backward()
    assert (maps.grad == 0).all()


def test_no_hard_groups():
    maps, _, _ = inputs(n=6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = OTLoss()(maps, torch.eye(3)[labels], labels)
    assert (out.num_groups, out.num_pairs, out.loss.item()) == (0, 0, 0.0)
    assert out.loss.requires_grad
    out.loss.backward()
    assert (maps.grad == 0).all()


def test_bf16_maps_under_autocast():
    maps, emb, labels = inputs(seed=6)
    want = OTLoss(eps=EPS, iters=ITERS, **PLAIN)(maps.detach().bfloat16().float(), emb, labels).loss
    maps16 = maps.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = OTLoss(eps=EPS, iters=ITERS, **PLAIN)(maps16, emb.bfloat16(), labels)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    out.loss.backward()
    assert maps16.grad.dtype == torch.bfloat16 and torch.isfinite(maps16.grad.float()).all()


def test_input_errors():
    maps, emb, labels = inputs()
    loss = OTLoss()
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        loss(maps[0], emb, labels)
    with pytest.raises(ValueError, match="embeddings must be"):
        loss(maps, emb[:-1], labels)
    with pytest.raises(ValueError, match="labels must be"):
        loss(maps, emb, labels[:-1])
    with pytest.raises(TypeError, match="integer"):
        loss(maps, emb, labels.float())
    with pytest.raises(TypeError, match="float"):
        loss(maps.detach().long(), emb, labels)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"iters": 0}, "iters"), ({"tol": -1.0}, "tol"), ({"grad": "x"}, "grad"),
    ({"reduction": "max"}, "reduction"), ({"chunk_size": 0}, "chunk_size"), ({"max_groups": 0}, "max_groups"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OTLoss(**kwargs)


def test_the_default_schedule_holds_each_value_to_its_tolerance():
    maps, emb, labels = inputs(seed=5)
    loss = OTLoss(eps=EPS)  # the default contract: each value within 1e-3 (relative), over-relaxed
    assert (loss.tol, loss.omega) == (1e-3, 1.6)
    points = maps.detach().flatten(2).transpose(1, 2)
    pairs = torch.tensor([[0, 1], [2, 7], [3, 12], [5, 9]])
    got = loss.pair_values(points, pairs).double().numpy()
    fm = maps.detach().double().numpy()
    want = np.array([reference_ot(fm[i], fm[j], EPS, 5000) for i, j in pairs.tolist()])
    assert np.abs(got / want - 1).max() <= 1e-3
