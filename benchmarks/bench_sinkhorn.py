"""Forward+backward time of batched Sinkhorn between feature-map pairs, ours against POT and geomloss.

    python benchmarks/bench_sinkhorn.py [--pairs 64] [--hw 7] [--channels 512] [--eps 0.05]
        [--iters 50] [--device cpu] [--threads 2] [--repeats 3]

P pairs of h x w x C feature maps, read as n = h*w points of R^C (Eq. 6), cosine cost, uniform
marginals, eps and a fixed number of iterations; each row times value -> sum -> backward to the
feature points (median over ``--repeats`` after one warm-up; wall time and, steadier on a shared
machine, the process CPU time of all threads):

- ours/fused:     cosine_sinkhorn (envelope gradient, what OTLoss uses)
- ours/envelope:  sinkhorn(cosine_cost(x, y)) with the envelope gradient
- ours/unrolled:  the same with autograd through the iterations
- pot/batch:      ot.batch.solve_batch(method="log_sinkhorn", grad="envelope") on our cost matrices
                  (loop over ot.sinkhorn2 if the installed POT has no ot.batch), tol=0 so that it
                  runs all iterations
- geomloss:       SamplesLoss("sinkhorn", p=2, blur=sqrt(eps), debias=False, backend="tensorized")
                  on the normalised points (|x - y|^2 / 2 = 1 - cos there), diameter 2 and a scaling
                  that gives it about ``--iters`` eps-annealing steps

Agreement: POT's value_linear is compared with ours (<P, C>), geomloss's value (the KL-regularised
dual) with ours(entropy=True) + eps (1 + log(n m)), which is the same quantity. POT and geomloss
are optional (benchmarks only); a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time
from typing import Callable

import torch
from torch import Tensor

from otface.allocator import retain_freed_memory
from otface.normalize import inverse_norm
from otface.ot import cosine_cost, cosine_sinkhorn, sinkhorn


def timed(step: Callable[[], Tensor], repeats: int, device: torch.device) -> tuple[float, float, Tensor]:
    """Median wall and process-CPU seconds of step() (forward + backward), and its last values.

    The CPU time (all threads of this process) is the steadier number on a shared machine.
    """
    walls, cpus, values = [], [], None
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        values = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call is the warm-up
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), values


def backward_of(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    """A step computing fn(x, y) (P,) and the gradient of its sum to x and y."""

    def step() -> Tensor:
        x.grad = y.grad = None
        values = fn(x, y)
        values.sum().backward()
        return values.detach()

    return step


GEOMLOSS_DIAMETER = 2.0  # the largest distance between unit vectors


def geomloss_cosine(eps: float, scaling: float) -> Callable[[Tensor, Tensor], Tensor]:
    """geomloss's SamplesLoss("sinkhorn", p=2, blur=sqrt(eps), debias=False, tensorized) on the
    normalised points, where its cost |x - y|^2 / 2 is 1 - cos: fn(x, y) -> (P,) its value, the
    KL-regularised dual (see kl_shift); ``scaling`` is its eps-annealing ratio."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(eps), debias=False, scaling=scaling,
                       diameter=GEOMLOSS_DIAMETER, backend="tensorized")
    return lambda a, b: loss(a * inverse_norm(a), b * inverse_norm(b))


def kl_shift(eps: float, n: int, m: int) -> float:
    """geomloss's value minus ours with entropy=True between n and m uniform points: <P, C> +
    eps KL(P | a x b) against <P, C> - eps H(P) differ by eps (1 + log(n m)) at convergence."""
    return eps * (1.0 + math.log(n * m))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--hw", type=int, default=7, help="feature-map side: n = hw * hw points")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    retain_freed_memory()  # as otface commands do; OTFACE_KEEP_FREED_MEMORY=0 times glibc's default

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    eps, iters, n = args.eps, args.iters, args.hw * args.hw
    gen = torch.Generator().manual_seed(args.seed)
    # post-activation-like features: non-negative, so cosines lie in [0, 1] as in a real backbone
    x = torch.randn(args.pairs, n, args.channels, generator=gen).relu_().to(device).requires_grad_()
    y = torch.randn(args.pairs, n, args.channels, generator=gen).relu_().to(device).requires_grad_()
    print(f"{args.pairs} pairs of {args.hw}x{args.hw}x{args.channels} (n = {n}), eps={eps}, iters={iters}, "
          f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}")

    rows: list[tuple[str, float, float, str]] = []

    def run(name: str, step: Callable[[], Tensor], check: Callable[[Tensor], str] = lambda v: "") -> None:
        wall, cpu, values = timed(step, args.repeats, device)
        rows.append((name, wall, cpu, check(values)))

    ours = cosine_sinkhorn(x, y, eps, iters).detach()
    ours_entropic = cosine_sinkhorn(x, y, eps, iters, entropy=True).detach().double()

    def agree(want: torch.Tensor) -> Callable[[torch.Tensor], str]:
        return lambda v: f"max |value - ours| = {(v.double() - want.double()).abs().max().item():.2e}"

    run("ours/fused (envelope)", backward_of(lambda a, b: cosine_sinkhorn(a, b, eps, iters), x, y))
    run("ours/envelope", backward_of(lambda a, b: sinkhorn(cosine_cost(a, b), eps, iters), x, y), agree(ours))
    run("ours/unrolled", backward_of(lambda a, b: sinkhorn(cosine_cost(a, b), eps, iters, grad="unrolled"), x, y),
        agree(ours))

    if importlib.util.find_spec("ot") is None:
        print("POT not installed: skipped (pip install pot)")
    else:
        import ot

        if importlib.util.find_spec("ot.batch") is not None:
            from ot.batch import solve_batch

            def pot(a: Tensor, b: Tensor) -> Tensor:
                res = solve_batch(cosine_cost(a, b), reg=eps, max_iter=iters, tol=0.0, method="log_sinkhorn",
                                  grad="envelope")
                return res.value_linear

            run(f"pot {ot.__version__} ot.batch log", backward_of(pot, x, y), agree(ours))
        else:
            def pot_loop(a: Tensor, b: Tensor) -> Tensor:
                cost = cosine_cost(a, b)
                wa, wb = torch.full((n,), 1 / n, dtype=cost.dtype), torch.full((n,), 1 / n, dtype=cost.dtype)
                return torch.stack([ot.sinkhorn2(wa, wb, c, eps, method="sinkhorn_log", numItermax=iters, stopThr=0.0)
                                    for c in cost])

            run(f"pot {ot.__version__} sinkhorn2 loop", backward_of(pot_loop, x, y), agree(ours))

    if importlib.util.find_spec("geomloss") is None:
        print("geomloss not installed: skipped (pip install geomloss)")
    else:
        scaling = (math.sqrt(eps) / GEOMLOSS_DIAMETER) ** (1.0 / iters)  # ~iters annealing steps down to blur
        loss, shift = geomloss_cosine(eps, scaling), kl_shift(eps, n, n)
        run(f"geomloss (scaling {scaling:.3f})", backward_of(lambda a, b: loss(a, b) - shift, x, y),
            agree(ours_entropic))

    ref_wall, ref_cpu = rows[0][1], rows[0][2]
    width = max(len(r[0]) for r in rows)
    print(f"{'solver':<{width}}  {'wall ms':>8}  {'x fused':>7}  {'cpu ms':>8}  {'x fused':>7}  agreement")
    for name, wall, cpu, note in rows:
        print(f"{name:<{width}}  {wall * 1e3:8.1f}  {wall / ref_wall:7.2f}  {cpu * 1e3:8.1f}  "
              f"{cpu / ref_cpu:7.2f}  {note}")


if __name__ == "__main__":
    main()
