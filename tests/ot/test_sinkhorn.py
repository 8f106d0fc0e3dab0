import importlib
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog

from otface.ot import cosine_cost, cosine_sinkhorn, sinkhorn, sinkhorn_plan, sinkhorn_potentials
from otface.ot.schedule import CHECK_EVERY
from support.sinkhorn import reference_sinkhorn

sinkhorn_module = importlib.import_module("otface.ot.sinkhorn")  # the package attribute is the function


def clouds(batch, n, m, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, d, generator=g, dtype=dtype), torch.randn(batch, m, d, generator=g, dtype=dtype)


def costs(batch, n, m, seed=0, dtype=torch.float64):
    """Cosine costs of random clouds: values in [0, 2]."""
    return cosine_cost(*clouds(batch, n, m, seed=seed)).to(dtype)


def exact_ot(cost: np.ndarray) -> float:
    """Unregularised OT with uniform marginals as a linear program."""
    n, m = cost.shape
    rows = np.kron(np.eye(n), np.ones(m))
    cols = np.kron(np.ones(n), np.eye(m))
    res = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.r_[np.full(n, 1 / n), np.full(m, 1 / m)],
                  bounds=(0, None), method="highs")
    assert res.success
    return res.fun


# ----------------------------------------------------------------------------------- cost
def test_cosine_cost_matches_manual():
    x, y = clouds(2, 3, 4, d=5)
    x[0, 1] = 0.0  # a zero vector costs 1 to everything
    c = cosine_cost(x, y)
    assert c.shape == (2, 3, 4)
    for p in range(2):
        for i in range(3):
            for j in range(4):
                nx, ny = x[p, i].norm().item(), y[p, j].norm().item()
                want = 1.0 - (x[p, i] @ y[p, j]).item() / (nx * ny) if nx > 0 else 1.0
                assert c[p, i, j].item() == pytest.approx(want, abs=1e-9)


def test_cosine_cost_zero_vector_has_finite_gradient():
    x = torch.zeros(1, 2, 3, requires_grad=True)
    cosine_cost(x, torch.randn(1, 2, 3)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cosine_cost_shape_errors():
    with pytest.raises(ValueError, match=r"\(P, n, d\)"):
        cosine_cost(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\(P, n, d\)"):
        cosine_cost(torch.randn(2, 3, 4), torch.randn(2, 3, 5))


# ------------------------------------------------------------------------------ exact OT
def test_small_eps_matches_assignment_problem(domain):
    # n = m with uniform marginals: the optimal plan is a permutation / n (Birkhoff)
    cost = costs(6, 5, 5, seed=1)
    got = sinkhorn(cost, eps=1e-3, iters=4000, tol=1e-12)
    for c, v in zip(cost.numpy(), got.tolist()):
        rows, cols = linear_sum_assignment(c)
        assert v == pytest.approx(c[rows, cols].sum() / 5, abs=2e-4)


def test_small_eps_matches_linear_program_for_unequal_sizes():
    cost = costs(4, 4, 7, seed=2)
    got = sinkhorn(cost, eps=1e-3, iters=4000, tol=1e-12)
    for c, v in zip(cost.numpy(), got.tolist()):
        assert v == pytest.approx(exact_ot(c), abs=2e-4)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
def test_matches_independent_reference(dtype, atol, domain):
    cost = costs(5, 6, 9, seed=3)
    got = sinkhorn(cost.to(dtype), eps=0.1, iters=300)
    assert got.dtype == dtype
    want = [reference_sinkhorn(c, 0.1, 300)[0] for c in cost.numpy()]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=atol)


def test_same_iterates_as_reference_at_few_iterations(domain):
    # not only the limit: iteration t of the log domain is iteration t of Eq. 8
    cost = costs(3, 5, 4, seed=4)
    for iters in (1, 3):
        want = [reference_sinkhorn(c, 0.2, iters)[1] for c in cost.numpy()]
        np.testing.assert_allclose(sinkhorn_plan(cost, eps=0.2, iters=iters).numpy(), want, rtol=1e-10, atol=1e-14)


def test_entropy_term(domain):
    cost = costs(3, 4, 5, seed=5)
    eps = 0.3
    plan = sinkhorn_plan(cost, eps, 200)
    entropy = -(plan * (plan.log() - 1)).sum((1, 2))  # H(P), Eq. 5
    want = (plan * cost).sum((1, 2)) - eps * entropy
    for grad in ("envelope", "unrolled"):
        torch.testing.assert_close(sinkhorn(cost, eps, 200, grad=grad, entropy=True), want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- plans
def test_plan_marginals(domain):
    cost = costs(4, 6, 9, seed=6)
    plan = sinkhorn_plan(cost, eps=0.05, iters=2000)
    torch.testing.assert_close(plan.sum(2), torch.full((4, 6), 1 / 6, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(plan.sum(1), torch.full((4, 9), 1 / 9, dtype=torch.float64), rtol=0, atol=1e-9)
    assert (plan >= 0).all()


def test_potentials_reproduce_the_plan(domain):
    cost = costs(2, 5, 3, seed=7)
    f, g, iterations = sinkhorn_potentials(cost, eps=0.1, iters=40)
    assert iterations == 40
    torch.testing.assert_close(((f[:, :, None] + g[:, None, :] - cost) / 0.1).exp(), sinkhorn_plan(cost, 0.1, 40))


# -------------------------------------------------------------------------- gradients
def test_unrolled_gradient_gradcheck(domain):
    cost = costs(2, 3, 4, seed=8).requires_grad_()
    for entropy in (False, True):
        assert torch.autograd.gradcheck(lambda c: sinkhorn(c, 0.5, 15, grad="unrolled", entropy=entropy), (cost,))


def test_envelope_gradient_is_the_plan(domain):
    cost = costs(3, 5, 6, seed=9).requires_grad_()
    for entropy in (False, True):
        (grad,) = torch.autograd.grad(sinkhorn(cost, 0.1, 100, entropy=entropy).sum(), cost)
        torch.testing.assert_close(grad, sinkhorn_plan(cost, 0.1, 100))


def test_envelope_equals_unrolled_and_finite_differences_at_convergence(domain):
    # the envelope theorem holds for the regularised objective <P, C> - eps H(P)
    cost = costs(2, 4, 5, seed=10).requires_grad_()
    eps, iters = 0.2, 400
    (envelope,) = torch.autograd.grad(sinkhorn(cost, eps, iters, entropy=True).sum(), cost)
    (unrolled,) = torch.autograd.grad(sinkhorn(cost, eps, iters, grad="unrolled", entropy=True).sum(), cost)
    torch.testing.assert_close(envelope, unrolled, rtol=0, atol=1e-10)
    h = 1e-6
    for idx in [(0, 0, 0), (0, 2, 3), (1, 3, 4), (1, 1, 0)]:
        bump = torch.zeros_like(cost)
        bump[idx] = h
        with torch.no_grad():
            up, down = (sinkhorn(cost + s * bump, eps, iters, entropy=True) for s in (1, -1))
            fd = (up - down).sum() / (2 * h)
        assert envelope[idx].item() == pytest.approx(fd.item(), abs=1e-8)


def test_unrolled_transport_cost_gradient_matches_finite_differences(domain):
    cost = costs(1, 4, 4, seed=11).requires_grad_()
    (grad,) = torch.autograd.grad(sinkhorn(cost, 0.2, 400, grad="unrolled").sum(), cost)
    h = 1e-6
    for idx in [(0, 0, 0), (0, 1, 3), (0, 3, 2)]:
        bump = torch.zeros_like(cost)
        bump[idx] = h
        with torch.no_grad():
            fd = (sinkhorn(cost + bump, 0.2, 400) - sinkhorn(cost - bump, 0.2, 400)).sum() / (2 * h)
        assert grad[idx].item() == pytest.approx(fd.item(), abs=1e-7)


@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
@pytest.mark.parametrize("entropy", [False, True])
def test_cosine_sinkhorn_equals_sinkhorn_of_cosine_cost(grad, entropy, domain):
    x, y = clouds(3, 5, 7, d=6, seed=12)
    x.requires_grad_()
    y.requires_grad_()
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    fused = cosine_sinkhorn(x, y, 0.1, 30, grad=grad, entropy=entropy)
    plain = sinkhorn(cosine_cost(x, y), 0.1, 30, grad=grad, entropy=entropy)
    torch.testing.assert_close(fused, plain)
    g_fused = torch.autograd.grad((fused * weights).sum(), (x, y))
    g_plain = torch.autograd.grad((plain * weights).sum(), (x, y))
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b)


def test_cosine_sinkhorn_without_grad_keeps_nothing():
    x, y = clouds(2, 4, 4)
    assert not cosine_sinkhorn(x, y).requires_grad
    with torch.no_grad():
        assert not cosine_sinkhorn(x.requires_grad_(), y).requires_grad


# ------------------------------------------------------------------------- tolerance
def test_tol_stops_early_and_still_matches(domain):
    cost = costs(4, 6, 6, seed=13)
    f, g, iterations = sinkhorn_potentials(cost, eps=0.1, iters=1000, tol=1e-8)
    assert iterations < 1000 and iterations % CHECK_EVERY == 0
    converged = sinkhorn(cost, eps=0.1, iters=5000)
    got = sinkhorn(cost, eps=0.1, iters=1000, tol=1e-8)
    assert ((got - converged).abs() / converged).max() <= 1e-8  # tol: the value's relative error
    assert sinkhorn_potentials(cost, eps=0.1, iters=1000).iterations == 1000


def test_tol_with_unrolled_gradient(domain):
    cost = costs(2, 4, 4, seed=14).requires_grad_()
    value = sinkhorn(cost, 0.1, 1000, tol=1e-9, grad="unrolled", entropy=True)
    (grad,) = torch.autograd.grad(value.sum(), cost)
    torch.testing.assert_close(grad, sinkhorn_plan(cost, 0.1, 1000), rtol=0, atol=1e-8)


# ----------------------------------------------------------------------- stability
def test_small_eps_is_stable_in_float32(domain):
    cost = costs(4, 49, 49, seed=15)
    cost = (cost * 2 / cost.max()).float()  # spans [0, 2]
    cost.requires_grad_()
    for grad in ("envelope", "unrolled"):
        value = sinkhorn(cost, eps=1e-3, iters=30, grad=grad)
        (g,) = torch.autograd.grad(value.sum(), cost)
        assert torch.isfinite(value).all() and torch.isfinite(g).all()
    plan = sinkhorn_plan(cost, eps=1e-3, iters=30)
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(2), torch.full((4, 49), 1 / 49), rtol=1e-4, atol=0)
    torch.testing.assert_close(sinkhorn(cost, 1e-3, 30).double(), sinkhorn(cost.double(), 1e-3, 30), rtol=0, atol=1e-4)


def test_autocast_bf16_input_is_computed_in_float32(domain):
    x, y = clouds(2, 6, 5, d=16, seed=16, dtype=torch.float32)
    cost32 = cosine_cost(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sinkhorn(cost32.bfloat16(), 0.1, 50)
        fused = cosine_sinkhorn(x.bfloat16(), y.bfloat16(), 0.1, 50)
        cost16 = cosine_cost(x.bfloat16(), y.bfloat16())
    assert value.dtype == fused.dtype == cost16.dtype == torch.float32
    torch.testing.assert_close(value, sinkhorn(cost32.bfloat16().float(), 0.1, 50))
    torch.testing.assert_close(fused, sinkhorn(cosine_cost(x.bfloat16().float(), y.bfloat16().float()), 0.1, 50))
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cosine_sinkhorn(xb, y, 0.1, 50).sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()


def test_empty_batch():
    for grad in ("envelope", "unrolled"):
        assert sinkhorn(torch.zeros(0, 3, 4), grad=grad).shape == (0,)
    assert cosine_sinkhorn(torch.zeros(0, 3, 2), torch.zeros(0, 4, 2)).shape == (0,)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"), ({"eps": math.nan}, "eps"), ({"eps": math.inf}, "eps"),
    ({"iters": 0}, "iters"), ({"iters": 2.5}, "iters"), ({"tol": 0.0}, "tol"), ({"tol": -1e-3}, "tol"),
    ({"omega": 0.0}, "omega"), ({"omega": 2.0}, "omega"), ({"omega": True}, "omega"), ({"omega": "1"}, "omega"),
    ({"grad": "implicit"}, "grad"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(torch.rand(2, 3, 3), **kwargs)
    with pytest.raises(ValueError, match=match):
        cosine_sinkhorn(torch.rand(2, 3, 4), torch.rand(2, 3, 4), **kwargs)


@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 3, 1), (2, 0, 3), (2, 3, 0)])
def test_bad_cost_shapes(shape):
    with pytest.raises(ValueError, match=r"\(P, n, m\)|n, m >= 1"):
        sinkhorn(torch.rand(shape))


def test_bad_cloud_shapes():
    with pytest.raises(ValueError, match=r"\(P, n, d\)"):
        cosine_sinkhorn(torch.rand(2, 3, 4), torch.rand(3, 3, 4))
    with pytest.raises(ValueError, match="n, m >= 1"):
        cosine_sinkhorn(torch.rand(2, 0, 4), torch.rand(2, 3, 4))


# ------------------------------------------------------------- kernel versus log domain
def test_domain_choice(monkeypatch):
    calls = []
    real = sinkhorn_module._kernel_solve
    monkeypatch.setattr(sinkhorn_module, "_kernel_solve", lambda *a: calls.append(1) or real(*a))
    cost = costs(2, 5, 5)  # values in [0, 2]
    sinkhorn(cost, eps=0.1)
    assert calls == [1]  # range / eps <= 20
    sinkhorn(cost, eps=0.01)
    assert calls == [1]  # range / eps up to 200: log domain


def test_kernel_domain_falls_back_to_log_domain_when_it_underflows(monkeypatch):
    cost = costs(3, 6, 6, seed=17, dtype=torch.float32)
    want = sinkhorn(cost, eps=1e-3, iters=20)  # log domain by the default rule
    monkeypatch.setattr(sinkhorn_module, "KERNEL_MAX_RANGE", math.inf)
    torch.testing.assert_close(sinkhorn(cost, eps=1e-3, iters=20), want)


def test_kernel_and_log_domain_agree_in_float32(monkeypatch):
    x, y = clouds(4, 49, 49, d=32, seed=18, dtype=torch.float32)
    values = []
    for bound in (math.inf, -1.0):
        monkeypatch.setattr(sinkhorn_module, "KERNEL_MAX_RANGE", bound)
        values.append(cosine_sinkhorn(x, y, eps=0.05, iters=50, entropy=True))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=2e-6)


@pytest.mark.parametrize("grad", ["envelope", "unrolled"])
@pytest.mark.parametrize("tol", [None, 1e-7])
def test_cpu_grouping_does_not_change_results(monkeypatch, grad, tol):
    # mixed batch: the small-eps problems take the log domain, the others the kernel domain
    cost = torch.cat([costs(3, 5, 6, seed=19), costs(2, 5, 6, seed=20) * 40]).requires_grad_()
    results = []
    for group_bytes in (1 << 30, 1, 2 * 5 * 6 * 8):  # all at once, one by one, two by two
        monkeypatch.setattr(sinkhorn_module, "CPU_GROUP_BYTES", group_bytes)
        value = sinkhorn(cost, 0.05, 300, tol=tol, grad=grad, entropy=True)
        (g,) = torch.autograd.grad(value.sum(), cost)
        results.append((value, g, sinkhorn_potentials(cost, 0.05, 300, tol=tol)))
    # with tol each group stops on its own error (<= tol like the whole batch would), so the
    # results may differ at that level; the slowest group sets the iteration count
    close = {"rtol": 0, "atol": 1e-6} if tol else {}
    for value, g, pots in results[1:]:
        torch.testing.assert_close(value, results[0][0], **close)
        torch.testing.assert_close(g, results[0][1], **close)
        torch.testing.assert_close(pots.f, results[0][2].f, **close)
        assert pots.iterations == results[0][2].iterations


def test_cosine_sinkhorn_gradient_to_one_cloud_only():
    x, y = clouds(2, 4, 5, seed=21)
    x.requires_grad_()
    cosine_sinkhorn(x, y, 0.1, 30).sum().backward()
    (want,) = torch.autograd.grad(sinkhorn(cosine_cost(x, y), 0.1, 30).sum(), x)
    torch.testing.assert_close(x.grad, want)
    assert y.grad is None
