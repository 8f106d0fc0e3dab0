"""How many Sinkhorn iterations to run: over-relaxation and a stop on the value's accuracy (SPEC §1).

One driver, :func:`iterate`, runs the alternating potential updates of Eq. 8 for every solver of
this package (the kernel and log domains of :mod:`.sinkhorn`, the fused path of :mod:`.fused`);
each supplies its half steps as :class:`Steps`.

Over-relaxation (``omega``): each half step moves the potential a factor omega past the plain
update, in log form f <- f + omega (f^ - f), i.e. u <- u^(1 - omega) (a / K v)^omega, where
f^ is Eq. 8's update. omega = 1 is plain Sinkhorn; any omega in (0, 2) has the same fixed point
(the entropic plan of Eq. 7), and near it the error contracts like successive over-relaxation's
(Young's theory for a two-block Gauss-Seidel sweep). On the default model's layer3 and layer4
maps, omega = 1.6 from the first step reaches a relative value error of 1e-3 in 20-35 iterations
where omega = 1 needs 90-120 (omega = 1.8 diverged on layer3; benchmarks/RESULTS.md). With
``tol`` the first CHECK_EVERY iterations are plain and relaxation starts at the first check:
relaxing a problem that plain Sinkhorn settles fast slows it down (layer2 of the default model:
5 plain iterations reach 5e-6, relaxed ones took 15 to reach 1e-3), and the late start costs the
slow ones 0-10 iterations (layer3 35-45 for 35-40, layer4 55 for 45-55 with Newton steps). A
problem whose marginal error more than doubles between two checks falls back to omega = 1. Relaxed
updates leave the gauge (f + c, g - c: the same plan) undamped, so the transient can push the
scalings past float32's range (2 of 22 CPU groups of layer1 maps fell back to the slow log
domain, and rebalancing only every 5 iterations did not prevent it); after every iteration the
potentials are rebalanced, which changes no plan.

Accuracy contract (``tol``): the loop stops once every problem's *estimated relative error of
the value* <P, C> is <= tol. Every CHECK_EVERY iterations, with the row and column marginal L1
errors of the current plan, delta (read off the change of the potentials, no extra pass over
the cost), the estimate is

    delta * (max C - min C) / |<P, C>|

since moving the misplaced mass delta changes <P, C> by at most delta times the cost's spread;
on trained-model maps the true error was 4-50x smaller than this (never more than 0.26 of it),
so the stop is conservative, and too much so where a few nearly degenerate pairs (layer4 of the
default model) stay off in the marginals long after their value has settled (benchmarks/RESULTS.md).
A problem that meets tol leaves the working set (its potentials are final); once at most half the
working set is still running, the running problems are copied into a smaller one, so a few slow
problems do not keep the whole batch iterating. ``iters`` bounds the
iterations of every problem. Each check costs a host synchronisation. The value costs a pass over
the cost, so it is computed only until a check knows it to SCALE_KNOWN = 10 %: from then on
|value| (1 - that check's estimate), a lower bound as the value moves by less than its error,
stands in for |value| (at most 10 % more iterations' worth of caution, 1-2 passes per problem).

Newton steps: Sinkhorn's error contracts by a rate that can come arbitrarily close to 1 (few
points, a plan near a permutation: one layer4 pair of the default model needed 660 iterations
where the others needed 30). From NEWTON_AFTER iterations on, at a check, a running problem
whose marginal error, at the rate of its last check interval, would need more than
NEWTON_WORTH * m further iterations takes up to NEWTON_STEPS Newton steps on the dual
(:func:`newton_step`, an m x m solve each, the cost of about m iterations); Newton converges
quadratically from where Sinkhorn has brought it (Sinkhorn-Newton, Brauer et al. 2017: 1e-2 ->
1e-3 -> 1e-5 -> 4e-10 in the tests; three steps per check took layer4 from 45 to 35 iterations,
one step per check from 325 to 45-55). A step that does not lower the marginal error is not
taken, and that problem takes no more. The
solver materialises the plans of those problems only (``Steps.plan``). Under autograd (the
unrolled gradient) no Newton steps are taken.

Measured, not adopted: eps-scaling (three iterations per eps from 0.5-2 down, by factors 0.5-0.7,
to the target) saved under 10 % of the iterations at eps = 0.05 (80-85 for 90 on layer3, 105-115
for 120 on layer4), where the cost spread over eps is at most 40; a warm start needs the same pair
again, and the OT loss solves each pair of a batch once, from images that change every step.
Newton steps from iteration 10 where more than m / 4 iterations remain, a failed one retried after
twice the iterations: on 64 pairs of a trained model's layer4 maps 45 -> 15 iterations and 4.5 ->
3.0 ms forward + backward at tau = 1e-3, but on layer3 35 -> 30 iterations and 5.4 -> 10-11 ms
(a step over 64 problems of 49 points costs about 15 iterations there). Cholesky in place of LU for
the step's positive definite system: no faster on this CPU (0.54 against 0.38 ms for 64 x 49 x 49).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from otface.options import OT_OMEGA

CHECK_EVERY = 5  # iterations between two accuracy checks when tol is set
SCALE_KNOWN = 0.1  # once a check puts |value| within this (relative), |value| (1 - that) bounds it from then on
DIVERGENCE_GROWTH = 2.0  # a problem whose marginal error grows this much between checks drops to omega = 1
OMEGA = OT_OMEGA  # the over-relaxation measured best on trained-model maps (benchmarks/RESULTS.md)
NEWTON_AFTER = 20  # iterations of Sinkhorn before a problem may take Newton steps (they diverge from a cold start)
NEWTON_STEPS = 3  # Newton steps per check at most, each taken only where it lowers the marginal error
NEWTON_WORTH = 1.0  # a Newton step costs about m Sinkhorn iterations (its m x m system); taken when more remain


class Steps(NamedTuple):
    """One solver's half steps on a working set; ``data`` is a tuple of batch-first tensors.

    col(data, f) -> plain update of g (Eq. 8's v = b / K^T u) from the row potentials f;
    row(data, g) -> plain update of f (u = a / K v) from g;
    relax(old, new, omega) -> the potential omega of the way from old to new (and beyond);
    gap(old, new) -> (P,) L1 marginal error of the plan at ``old``, new being the plain update;
    value(data, f, g) -> (P,) the transport cost <P, C> of the plan of (f, g);
    balance(f, g) -> (f, g) with the same plan and balanced magnitudes (the gauge f + c, g - c);
    plan(data, f, g) -> (P, n, m) the plan of (f, g), materialised (for Newton steps; None: none);
    shift(f, step) -> the potentials of log-scaling f + step.
    Potentials are in the solver's own form (log scalings divided by eps, or scalings).
    """

    col: Callable[[tuple[Tensor, ...], Tensor], Tensor]
    row: Callable[[tuple[Tensor, ...], Tensor], Tensor]
    relax: Callable[[Tensor, Tensor, Tensor], Tensor]
    gap: Callable[[Tensor, Tensor], Tensor]
    value: Callable[[tuple[Tensor, ...], Tensor, Tensor], Tensor]
    balance: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    plan: Callable[[tuple[Tensor, ...], Tensor, Tensor], Tensor] | None = None
    shift: Callable[[Tensor, Tensor], Tensor] | None = None


def log_relax(old: Tensor, new: Tensor, omega: Tensor) -> Tensor:
    """old + omega (new - old) for log potentials (P, n), omega (P, 1)."""
    return torch.lerp(old, new, omega)


def log_balance(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """(f - c, g + c) for log potentials f (P, n), g (P, m), c = max f per problem: the same plan."""
    shift = f.amax(1, keepdim=True)
    return f - shift, g + shift


def log_gap(old: Tensor, new: Tensor) -> Tensor:
    """sum_i a_i |exp(old_i - new_i) - 1| for log potentials (P, n), a = 1/n: (P,)."""
    return torch.expm1(old - new).abs().mean(1)


def log_shift(f: Tensor, step: Tensor) -> Tensor:
    """f + step for log potentials."""
    return f + step


def marginals(plan: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column sums r = P 1 (P, n) and c = P^T 1 (P, m) of plans (P, n, m)."""
    return plan.sum(2), plan.sum(1)


def marginal_error(rows: Tensor, cols: Tensor) -> Tensor:
    """sum_i |r_i - 1/n| + sum_j |c_j - 1/m| from a plan's :func:`marginals`: (P,)."""
    return (rows - 1.0 / rows.shape[1]).abs().sum(1) + (cols - 1.0 / cols.shape[1]).abs().sum(1)


def newton_step(plan: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Newton step on the entropic dual (Eq. 5) at the plan (P, n, m) with its :func:`marginals`
    rows (P, n), cols (P, m), uniform marginals a = 1/n, b = 1/m: (df (P, n), dg (P, m), solved (P,)
    bool), steps of the log scalings (f / eps, g / eps).

    With r = P 1, c = P^T 1 the step solves [[diag r, P], [P^T, diag c]] (df, dg) = (a - r, b - c);
    eliminating df leaves (diag c - P^T diag(1/r) P) dg = b - c - P^T ((a - r) / r), singular only
    along dg = 1 (the gauge), which adding 1 1^T / m fixes; then df = (a - r - P dg) / r.
    """
    n, m = plan.shape[1], plan.shape[2]
    scaled = plan / rows.unsqueeze(2)  # diag(1/r) P
    schur = torch.diag_embed(cols) - torch.bmm(plan.transpose(1, 2), scaled) + 1.0 / m
    rhs = (1.0 / m - cols) - torch.bmm(scaled.transpose(1, 2), (1.0 / n - rows).unsqueeze(2)).squeeze(2)
    dg, info = torch.linalg.solve_ex(schur, rhs)
    df = ((1.0 / n - rows) - torch.bmm(plan, dg.unsqueeze(2)).squeeze(2)) / rows
    return df, dg, info == 0


def _plain(old: Tensor, new: Tensor, omega: Tensor) -> Tensor:
    """The plain update (omega = 1)."""
    return new


def _as_is(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """No rebalancing (omega = 1)."""
    return f, g


def iterate(steps: Steps, data: tuple[Tensor, ...], f: Tensor, g: Tensor, spread: Tensor | None,
            iters: int, tol: float | None, omega: float) -> tuple[Tensor, Tensor, int]:
    """Run the relaxed half steps from (f, g): (f (P, n), g (P, m), iterations of the longest problem).

    spread: (P,) max C - min C per problem, needed with ``tol`` (module docstring). The first g
    update is plain (g starts at an arbitrary 0); omega applies from there on, or with ``tol`` from
    the first check on.
    """
    weight = f.new_full((f.shape[0], 1), omega)
    if omega == 1.0:  # plain Sinkhorn: the update itself, bit for bit (g follows f: no gauge drift)
        steps = steps._replace(relax=_plain, balance=_as_is)
    if f.shape[0] == 0:
        return f, g, iters
    return _run_iterations(steps, data, f, g, spread, iters, tol, weight)


def _run_iterations(steps: Steps, data: tuple[Tensor, ...], f: Tensor, g: Tensor, spread: Tensor | None,
                    iters: int, tol: float | None, weight: Tensor) -> tuple[Tensor, Tensor, int]:
    """:func:`iterate`'s loop: with ``tol``, checks every CHECK_EVERY iterations, and a problem's
    potentials are those of the first check that finds it within tol, whatever the rest of the
    batch does; without, all ``iters`` iterations and no check."""
    f_out, g_out = f, g
    index = torch.arange(f.shape[0], device=f.device)  # the working set's rows in the output
    running = torch.ones_like(index, dtype=torch.bool)  # per working-set row: not yet within tol
    scale = f.new_full(index.shape, float("nan"))  # a lower bound of |value|, kept from the check that computed it
    recording = torch.is_grad_enabled() and any(d.requires_grad for d in data)  # the unrolled gradient: Sinkhorn only
    newton_ok = torch.full_like(running, steps.plan is not None and not recording)  # per row: no Newton step failed
    last = growth = f.new_full(index.shape, float("nan"))  # marginal error at the last check, its ratio
    done = iters
    relaxed = weight
    if tol is not None:  # plain until the first check (module docstring)
        weight = torch.ones_like(weight)
    for t in range(iters):
        check = tol is not None and t % CHECK_EVERY == CHECK_EVERY - 1
        g_hat = steps.col(data, f)
        if check:
            gap_col = steps.gap(g, g_hat)
        g = steps.relax(g, g_hat, weight) if t else g_hat
        f_hat = steps.row(data, g)
        if check:
            gap = gap_col + steps.gap(f, f_hat)
        f, g = steps.balance(steps.relax(f, f_hat, weight), g)
        if not check:
            continue
        with torch.no_grad():
            if not bool((scale[running] > 0).all()):  # first check, or a value not yet known to SCALE_KNOWN
                value = steps.value(data, f, g).abs()
                known = gap * spread / value
                scale = torch.where(known <= SCALE_KNOWN, value * (1.0 - known), math.nan)
                estimate = known
            else:
                estimate = gap * spread / scale
            reached = running & (estimate <= tol)  # a NaN estimate keeps running
            growth = gap / last  # NaN at the first check
            if t == CHECK_EVERY - 1:
                weight = relaxed
            weight = torch.where((growth > DIVERGENCE_GROWTH)[:, None], torch.ones_like(weight), weight)
            last = gap
        f_out, g_out = f_out.index_copy(0, index[reached], f[reached]), g_out.index_copy(0, index[reached], g[reached])
        running = running & ~reached
        alive = int(running.sum())
        if alive == 0:
            done = t + 1
            break
        if t + 1 >= NEWTON_AFTER:
            f, g, newton_ok = _newton_where_worth(steps, data, f, g, running & newton_ok, newton_ok,
                                                  _remaining(growth, estimate, tol) > NEWTON_WORTH * g.shape[1])
        if 2 * alive <= len(running):  # keep only the running problems
            keep = running.nonzero().squeeze(1)
            data = tuple(d.index_select(0, keep) for d in data)
            f, g, spread, weight, last, growth, scale, index, newton_ok = (
                x.index_select(0, keep) for x in (f, g, spread, weight, last, growth, scale, index, newton_ok))
            running = running.index_select(0, keep)
    return f_out.index_copy(0, index[running], f[running]), g_out.index_copy(0, index[running], g[running]), done


def _remaining(growth: Tensor, estimate: Tensor, tol: float) -> Tensor:
    """(P,) iterations still to run before estimate <= tol if the marginal error keeps shrinking
    by ``growth`` per check (inf where it does not shrink)."""
    remaining = CHECK_EVERY * torch.log(tol / estimate) / torch.log(growth)
    return torch.where(growth >= 1.0, math.inf, remaining)  # NaN (no rate yet) stays NaN: not worth a step


def _newton_where_worth(steps: Steps, data: tuple[Tensor, ...], f: Tensor, g: Tensor, allowed: Tensor,
                        newton_ok: Tensor, worth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Up to NEWTON_STEPS Newton steps for the working-set rows ``allowed & worth`` (module
    docstring); a row whose step fails to lower its marginal error keeps its last potentials and
    takes no more Newton steps."""
    rows = (allowed & worth).nonzero().squeeze(1)
    if rows.numel() == 0:
        return f, g, newton_ok
    sub = tuple(d.index_select(0, rows) for d in data)
    f_sub, g_sub = f.index_select(0, rows), g.index_select(0, rows)
    plan = steps.plan(sub, f_sub, g_sub)
    sums = marginals(plan)
    error = marginal_error(*sums)
    ok = torch.ones_like(rows, dtype=torch.bool)
    for _ in range(NEWTON_STEPS):
        df, dg, solved = newton_step(plan, *sums)
        f_new, g_new = steps.balance(steps.shift(f_sub, df), steps.shift(g_sub, dg))
        plan_new = steps.plan(sub, f_new, g_new)
        sums_new = marginals(plan_new)
        error_new = marginal_error(*sums_new)
        better = ok & solved & (error_new < error)  # NaN: False
        ok = better
        f_sub, g_sub = torch.where(better[:, None], f_new, f_sub), torch.where(better[:, None], g_new, g_sub)
        plan, error = torch.where(better[:, None, None], plan_new, plan), torch.where(better, error_new, error)
        sums = tuple(torch.where(better[:, None], new, old) for new, old in zip(sums_new, sums))
        if not bool(better.any()):
            break
    return f.index_copy(0, rows, f_sub), g.index_copy(0, rows, g_sub), newton_ok.index_copy(0, rows, ok)
