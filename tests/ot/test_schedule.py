"""The iteration schedule (otface.ot.schedule): over-relaxed updates, the stop on the value's
estimated relative error, the shrinking working set and the Newton steps -- against an independent
float64 reference, the Newton system itself and converged solutions, on random costs and on a
trained model's feature maps."""

import importlib
import math

import numpy as np
import pytest
import torch

from otface.config import load_config
from otface.data.transforms import network_input
from otface.ot import cosine_cost, cosine_sinkhorn, sinkhorn, sinkhorn_plan, sinkhorn_potentials
from otface.ot.schedule import CHECK_EVERY, OMEGA, _newton_where_worth, marginal_error, marginals, newton_step
from otface.train.trainer import Trainer
from support.runs import TINY
from support.sinkhorn import reference_sinkhorn

from .conftest import sinkhorn_module


def costs(batch, n, m, seed=0, spread=2.0):
    """Cosine costs of random clouds, rescaled to span [0, spread]."""
    g = torch.Generator().manual_seed(seed)
    cost = cosine_cost(torch.randn(batch, n, 8, generator=g, dtype=torch.float64),
                       torch.randn(batch, m, 8, generator=g, dtype=torch.float64))
    return cost * spread / cost.amax((1, 2), keepdim=True)


def relative(got, want):
    return ((got - want).abs() / want.abs()).max().item()


@pytest.mark.parametrize("omega", [0.7, 1.6])
def test_relaxed_iterates_equal_the_reference(omega, domain):
    cost = costs(3, 7, 5, seed=1)
    for iters in (1, 2, 9):
        want = np.stack([reference_sinkhorn(c, 0.2, iters, omega)[1] for c in cost.numpy()])
        np.testing.assert_allclose(sinkhorn_plan(cost, 0.2, iters, omega=omega).numpy(), want, rtol=1e-10, atol=1e-14)


def test_relaxation_keeps_the_fixed_point(domain):
    cost = costs(4, 9, 6, seed=2)
    plain = sinkhorn(cost, 0.05, 20000, tol=1e-13)
    for omega in (0.5, 1.3, OMEGA, 1.9):
        torch.testing.assert_close(sinkhorn(cost, 0.05, 20000, tol=1e-13, omega=omega), plain, rtol=1e-11, atol=0)


def test_relaxation_needs_fewer_iterations_to_the_same_accuracy(no_newton):
    cost = costs(8, 30, 30, seed=3)
    plain = sinkhorn_potentials(cost, 0.05, 5000, tol=1e-6).iterations
    relaxed = sinkhorn_potentials(cost, 0.05, 5000, tol=1e-6, omega=OMEGA).iterations
    assert relaxed * 2 <= plain, (relaxed, plain)


def test_with_tol_the_first_interval_is_plain(domain):
    # a problem that plain Sinkhorn settles by the first check stops there, omega or not
    cost = costs(3, 9, 7, seed=14)
    plain = sinkhorn_potentials(cost, 1.0, 1000, tol=1e-4)
    relaxed = sinkhorn_potentials(cost, 1.0, 1000, tol=1e-4, omega=OMEGA)
    assert relaxed.iterations == plain.iterations == CHECK_EVERY
    np.testing.assert_allclose(sinkhorn_plan(cost, 1.0, 1000, tol=1e-4, omega=OMEGA).numpy(),
                               np.stack([reference_sinkhorn(c, 1.0, CHECK_EVERY, 1.0)[1] for c in cost.numpy()]),
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("tol", [1e-3, 1e-4, 1e-6])
def test_each_value_reaches_its_tol(tol, domain):
    cost = torch.cat([costs(6, 12, 10, seed=4), costs(6, 12, 10, seed=5, spread=0.05)])  # near-parallel maps too
    converged = sinkhorn(cost, 0.05, 20000, tol=1e-13)
    for omega in (1.0, OMEGA):
        got = sinkhorn(cost, 0.05, 5000, tol=tol, omega=omega)
        assert relative(got, converged) <= tol


def test_a_problem_stops_where_it_would_alone():
    # one slow problem (small eps relative to its spread) among fast ones: each problem's potentials
    # are those of the first check that finds it within tol, whatever the batch around it
    cost = torch.cat([costs(5, 10, 10, seed=6, spread=0.02), costs(1, 10, 10, seed=7)])
    together = sinkhorn_potentials(cost, 0.05, 3000, tol=1e-9, omega=OMEGA)
    for p in range(len(cost)):
        alone = sinkhorn_potentials(cost[p:p + 1], 0.05, 3000, tol=1e-9, omega=OMEGA)
        torch.testing.assert_close(together.f[p:p + 1], alone.f, rtol=0, atol=1e-12)
        torch.testing.assert_close(together.g[p:p + 1], alone.g, rtol=0, atol=1e-12)
    slowest = sinkhorn_potentials(cost[-1:], 0.05, 3000, tol=1e-9, omega=OMEGA).iterations
    assert together.iterations == slowest > sinkhorn_potentials(cost[:1], 0.05, 3000, tol=1e-9).iterations


@pytest.mark.parametrize("omega", [1.9, 1.99])
def test_an_overshooting_omega_still_meets_tol(omega, domain):
    cost = costs(6, 12, 12, seed=8)
    converged = sinkhorn(cost, 0.05, 40000, tol=1e-13)
    got = sinkhorn(cost, 0.05, 40000, tol=1e-8, omega=omega)  # problems whose error grows fall back to omega = 1
    assert relative(got, converged) <= 1e-8


def test_tol_with_the_unrolled_gradient_is_the_plan():
    cost = costs(2, 5, 4, seed=9).requires_grad_()
    value = sinkhorn(cost, 0.1, 3000, tol=1e-12, grad="unrolled", entropy=True, omega=OMEGA)
    (grad,) = torch.autograd.grad(value.sum(), cost)
    torch.testing.assert_close(grad, sinkhorn_plan(cost, 0.1, 20000, tol=1e-13), rtol=0, atol=1e-9)


def test_iterations_are_counted_in_checks():
    cost = costs(2, 6, 6, seed=10)
    assert sinkhorn_potentials(cost, 0.1, 1000, tol=1e-8, omega=OMEGA).iterations % CHECK_EVERY == 0
    assert sinkhorn_potentials(cost, 0.1, 7, tol=1e-14, omega=OMEGA).iterations == 7  # the cap


# ------------------------------------------------------------------------------ Newton steps
def test_a_newton_step_solves_the_newton_system():
    g = torch.Generator().manual_seed(11)
    plan = torch.rand(3, 6, 4, generator=g, dtype=torch.float64) / 24  # any positive plan, marginals off
    rows, cols = plan.sum(2), plan.sum(1)
    df, dg, solved = newton_step(plan, rows, cols)
    assert solved.all()
    for p in range(3):  # the whole block system, not the eliminated one the code solves
        hessian = torch.cat([torch.cat([torch.diag(rows[p]), plan[p]], 1),
                             torch.cat([plan[p].T, torch.diag(cols[p])], 1)])
        residual = torch.cat([1 / 6 - rows[p], 1 / 4 - cols[p]])
        torch.testing.assert_close(hessian @ torch.cat([df[p], dg[p]]), residual, rtol=0, atol=1e-15)


def test_newton_steps_converge_quadratically_to_the_sinkhorn_fixed_point(no_newton):
    cost = costs(3, 8, 8, seed=12)
    converged = sinkhorn_potentials(cost, 0.05, 200000, tol=1e-14, omega=OMEGA)
    start = sinkhorn_potentials(cost, 0.05, 20, omega=OMEGA)
    f, g = start.f / 0.05, start.g / 0.05
    errors = []
    for _ in range(5):
        plan = torch.exp(f[:, :, None] + g[:, None, :] - cost / 0.05)
        sums = marginals(plan)
        errors.append(marginal_error(*sums).max().item())
        df, dg, _ = newton_step(plan, *sums)
        f, g = f + df, g + dg
    assert errors[0] > 1e-3 and errors[4] < 1e-13, errors
    assert all(later <= 100 * earlier ** 2 for earlier, later in zip(errors[1:3], errors[2:4])), errors
    shift = (g - converged.g / 0.05)[:, :1]  # the same plan up to the gauge f + c, g - c
    torch.testing.assert_close(f + shift, converged.f / 0.05, rtol=0, atol=1e-9)


def test_newton_steps_finish_the_slow_problems_within_tol(domain, monkeypatch):
    eps, cost = 0.05, costs(4, 8, 8, seed=1)  # few points, a plan near a permutation: Sinkhorn crawls
    fast = sinkhorn_potentials(cost, eps, 50000, tol=1e-6, omega=OMEGA).iterations
    got = sinkhorn(cost, eps, 50000, tol=1e-6, omega=OMEGA)
    monkeypatch.setattr(importlib.import_module("otface.ot.schedule"), "NEWTON_AFTER", math.inf)
    slow = sinkhorn_potentials(cost, eps, 50000, tol=1e-6, omega=OMEGA).iterations
    assert fast <= 100 and slow >= 10 * fast, (fast, slow)
    converged = sinkhorn(cost, eps, 400000, tol=1e-13, omega=OMEGA)  # Sinkhorn only, to the end
    assert relative(got, converged) <= 1e-6


def test_a_newton_step_that_does_not_help_changes_nothing():
    cost = costs(2, 16, 16, seed=0)
    steps = sinkhorn_module._log_steps(1 / 0.02, None)
    zeros = cost.new_zeros(2, 16), cost.new_zeros(2, 16)  # a cold start: the full step overshoots
    every = torch.ones(2, dtype=torch.bool)
    f, g, ok = _newton_where_worth(steps, (cost,), *zeros, every, every, every)
    assert not ok.any()
    assert (f == 0).all() and (g == 0).all()


@pytest.fixture(scope="module")
def trained_maps(tmp_path_factory):
    """Feature maps of every stage of a tiny model trained here (ArcFace, one epoch), for 24
    distinct image pairs of its training set: {stage: (x (24, hw, C), y (24, hw, C))}."""
    out = tmp_path_factory.mktemp("trained")
    cache = f"data.synthetic.cache_dir={tmp_path_factory.mktemp('synth')}"
    trainer = Trainer(load_config(None, TINY + [cache, "optim.epochs=1", "ot.weight=0"]), out)
    trainer.train()
    backbone = trainer.backbone.eval()
    images = torch.stack([trainer.dataset[i * 6][0] for i in range(12)])  # 12 identities x 6 images
    with torch.no_grad():
        _, maps = backbone.forward_features(network_input(images, 32), list(backbone.stage_names))
    a, b = torch.triu_indices(12, 12, offset=1)[:, ::3]
    return {stage: (m.flatten(2).transpose(1, 2)[a], m.flatten(2).transpose(1, 2)[b]) for stage, m in maps.items()}


@pytest.mark.parametrize("tol", [1e-3, 1e-4])
def test_the_relaxed_schedule_reaches_tol_on_trained_maps(trained_maps, tol):
    for stage, (x, y) in trained_maps.items():
        converged = cosine_sinkhorn(x.double(), y.double(), 0.05, 40000, 1e-13, omega=OMEGA)
        got = cosine_sinkhorn(x.float(), y.float(), 0.05, 3000, tol, omega=OMEGA)
        assert relative(got.double(), converged) <= tol, stage
