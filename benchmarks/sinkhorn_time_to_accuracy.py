"""Time to a stated accuracy of the OT value, on feature maps of a trained model: ours against POT and geomloss.

    python benchmarks/sinkhorn_time_to_accuracy.py runs/<run>/last.pt [--pairs 64] [--eps 0.05]
        [--threads 2] [--repeats 3] [--plot benchmarks/sinkhorn_time_to_accuracy.png]
        [--stages layer1 ...] [--device cuda] [--project-channels 128] [--input-size 112] [--fused]
        [--no-pot] [--no-geomloss]

For every stage of the trained backbone, distinct image pairs of a P x K batch of its training set
(as the OT loss sees them; see benchmarks/sinkhorn_accuracy.py), and tau = 1e-3, 1e-4 (the largest
relative error of the value <P, C> over the pairs, against the float64 solution converged to 1e-12):

- ours: cosine_sinkhorn with the accuracy contract, tol = tau, omega = 1.6 (what OTLoss runs);
- plain: today's solver before the contract, omega = 1 and the fewest fixed iterations (a multiple
  of 10, found by search against the reference: an oracle no user has) that reach tau; where even CAP
  iterations miss tau, its time at CAP, a lower bound (">= ");
- pot: POT's ot.batch.solve_batch (log_sinkhorn, envelope gradient) on our cost matrices, all pairs in
  one call where memory allows (POT_CHUNK_ELEMENTS, POT_RECORDED: 8 per call for 28 x 28 maps up to 240
  iterations, fewer beyond), its own stop disabled (tol = 0), for as many iterations as plain: the same
  iterates in exact arithmetic (its errors are printed, to check);
- geomloss: SamplesLoss("sinkhorn", tensorized), whose iterations are set by its eps-annealing ratio
  ``scaling``: the smallest of GEOMLOSS_SCALINGS that reaches tau. Its value is the KL-regularised
  dual <P, C> + eps KL(P | a x b), so its error is against that quantity converged in float64 (ours
  with entropy=True, shifted), its gradient against that quantity's gradient.

Each row times value -> sum -> backward to the points (median of ``--repeats`` after a warm-up) and
reports the value's error and the gradient's (max |grad - grad*| / max |grad*|, to the first cloud).
One iteration's time is the floor of any schedule (normalisation, cost, kernel, value and gradient
products are paid once whatever the iteration count), so plain / (one iteration) bounds what any
schedule can gain on plain at that stage.
With ``--plot``, the largest value error against time per stage, for ours over tol and the others
over iteration counts, as PNG.
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from bench_sinkhorn import backward_of, geomloss_cosine, kl_shift, timed
from sinkhorn_accuracy import batch_pairs

from otface.allocator import retain_freed_memory
from otface.data.transforms import network_input
from otface.eval.model import backbone_from_checkpoint
from otface.ot import cosine_cost, cosine_sinkhorn
from otface.ot.fused import fused_cosine_sinkhorn
from otface.ot.schedule import OMEGA
from otface.ot.sinkhorn import sinkhorn_potentials
from otface.train.data import open_training_set, prepare_data

TAUS = (1e-3, 1e-4)
CAP = 1000  # the most iterations of any search or run
CURVE_TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
CURVE_ITERS = (10, 20, 50, 100, 200, 400)


GEOMLOSS_SCALINGS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)  # its annealing ratios, fastest first
# Under its envelope gradient POT's autograd records every iteration's (P, n, m) tensors (its iterations run on
# -M / reg, which requires grad): about 10 bytes per entry and iteration (measured on 1-2 pairs of 784 x 784 at
# 100-200 iterations), so 8 pairs of 28 x 28 maps fit at up to 360 iterations and 256 pairs at 660 (8 per call)
# were killed for memory. Each call gets as many pairs as keep P n m within POT_CHUNK_ELEMENTS and
# P n m k within POT_RECORDED (about 12 GB recorded): all 64 in one call from 14 x 14 maps down. On 7 x 7 and
# 4 x 4 maps its time per iteration is mostly per-call overhead, so smaller calls would charge that several
# times over. Both were set on this 24 GiB machine; a GPU's calls scale with its memory (pot_memory_scale). Where
# one pair alone would record more than POT_RECORDED, POT is not run.
POT_CHUNK_ELEMENTS = 8 * 784 * 784
POT_RECORDED = POT_CHUNK_ELEMENTS * 240
POT_MEASURED_ON = 24 * 2**30  # bytes of memory of the machine the two limits were set on


def pot_memory_scale(device: torch.device) -> float:
    """How many times POT_MEASURED_ON the memory that POT's calls on ``device`` may fill: a GPU's own
    memory, 1 on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / POT_MEASURED_ON
    return 1.0


def pot_solver(eps: float, device: torch.device):
    """POT's batched log-domain Sinkhorn as fn(k, entries) -> solve(x, y), k iterations on clouds
    whose cost has ``entries`` = n m entries per pair, in calls of at most POT_CHUNK_ELEMENTS cost
    entries and POT_RECORDED entries times iterations (both times :func:`pot_memory_scale`); solve is
    None where one pair exceeds that. None when POT is not installed."""
    if importlib.util.find_spec("ot") is None or importlib.util.find_spec("ot.batch") is None:
        return None
    from ot.batch import solve_batch

    scale = pot_memory_scale(device)

    def with_iters(k: int, entries: int):
        chunk = int(scale * min(POT_CHUNK_ELEMENTS / entries, POT_RECORDED / (entries * k)))
        if chunk < 1:
            return None

        def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.cat([solve_batch(cosine_cost(p, q), reg=eps, max_iter=k, tol=0.0, method="log_sinkhorn",
                                          grad="envelope").value_linear
                              for p, q in zip(a.split(chunk), b.split(chunk))])

        return solve

    return with_iters


def geomloss_solver(eps: float):
    """geomloss's SamplesLoss("sinkhorn") (tensorized, eps-scaling) as fn(scaling)(x, y) -> its value
    (the KL-regularised dual, an entropic quantity: see entropic_reference), or None when not installed.
    On unit vectors its p = 2 cost |x - y|^2 / 2 is our 1 - cos; blur = sqrt(eps), diameter 2."""
    if importlib.util.find_spec("geomloss") is None:
        return None
    return lambda scaling: geomloss_cosine(eps, scaling)


def entropic_reference(x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """geomloss's quantity, converged in float64, and its gradient to x: ours with entropy=True
    (<P, C> - eps H(P)) + eps (1 + log(n m)), which is <P, C> + eps KL(P | a x b) (bench_sinkhorn.py)."""
    xd = x.detach().double().requires_grad_()
    shift = kl_shift(eps, x.shape[1], y.shape[1])
    ref = cosine_sinkhorn(xd, y.detach().double(), eps, 20 * CAP, 1e-12, entropy=True, omega=OMEGA) + shift
    (grad,) = torch.autograd.grad(ref.sum(), xd)
    return ref.detach(), grad


def fastest_scaling(make, x, y, ref, ref_grad, tau: float) -> float | None:
    """The smallest of GEOMLOSS_SCALINGS (the fewest annealing steps) that reaches tau."""
    return next((s for s in GEOMLOSS_SCALINGS if errors(make(s), x, y, ref, ref_grad)[0] <= tau), None)


def errors(fn, x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, ref_grad: torch.Tensor) -> tuple[float, float]:
    """(largest relative value error over the pairs, relative gradient error) of fn against the reference."""
    xs, ys = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    values = fn(xs, ys)
    (grad,) = torch.autograd.grad(values.sum(), xs)
    value_err = ((values.detach().double() - ref).abs() / ref.abs()).max().item()
    return value_err, ((grad.double() - ref_grad).abs().max() / ref_grad.abs().max()).item()


def fewest_iters(make, x, y, ref, ref_grad, tau: float) -> int | None:
    """The smallest multiple of 10 up to CAP whose fixed-iteration run reaches tau (bisection: the
    error falls with the iterations on these maps, up to float32 rounding)."""
    if errors(make(CAP), x, y, ref, ref_grad)[0] > tau:
        return None
    low, high = 0, CAP // 10  # in tens: low fails (or is 0), high reaches
    while high - low > 1:
        mid = (low + high) // 2
        if errors(make(10 * mid), x, y, ref, ref_grad)[0] <= tau:
            high = mid
        else:
            low = mid
    return 10 * high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training checkpoint (last.pt) of a trained model")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", default="", help="write the error-against-time plot to this PNG")
    parser.add_argument("--stages", nargs="*", default=None, help="only these stages (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--project-channels", type=int, default=0, metavar="C",
                        help="map the points to C channels by a fixed Gaussian matrix (cosines kept in "
                             "expectation): the trained maps as a stand-in for wider ones")
    parser.add_argument("--input-size", type=int, default=0, metavar="S",
                        help="run the stages on S px inputs (default: the model's own side): larger maps "
                             "from the same trained filters, e.g. 56 x 56 layer1 maps from a 56 px model at 112")
    parser.add_argument("--fused", action="store_true", help="also time fused_cosine_sinkhorn (for CUDA)")
    parser.add_argument("--no-pot", action="store_true", help="skip POT")
    parser.add_argument("--no-geomloss", action="store_true", help="skip geomloss")
    args = parser.parse_args()
    retain_freed_memory()  # as otface commands do; OTFACE_KEEP_FREED_MEMORY=0 times glibc's default
    torch.set_num_threads(args.threads)
    eps = args.eps
    model, cfg = backbone_from_checkpoint(args.checkpoint)
    root, _ = prepare_data(cfg.data, progress=False)
    images, a, b = batch_pairs(open_training_set(root, cfg.data), args.pairs)
    side = args.input_size or cfg.model.input_size
    with torch.no_grad():
        _, maps = model.forward_stages(network_input(images, side), list(model.stage_names))
    device = torch.device(args.device)
    pot = None if args.no_pot else pot_solver(eps, device)
    geo = None if args.no_geomloss else geomloss_solver(eps)
    print(f"{args.checkpoint}: {cfg.model.backbone} {cfg.model.params} trained at {cfg.model.input_size} px, "
          f"run at {side} px; "
          f"{args.pairs} pairs, eps {eps:g}, {torch.get_num_threads()} threads, torch {torch.__version__}"
          + ("" if pot else "; POT skipped" + ("" if args.no_pot else ": not installed (pip install pot)"))
          + ("" if geo else "; geomloss skipped"
             + ("" if args.no_geomloss else ": not installed (pip install geomloss)")))
    curves = {}
    for stage, fmap in maps.items():
        if args.stages and stage not in args.stages:
            continue
        points = fmap.flatten(2).transpose(1, 2).float()  # (N, h*w, C), Eq. 6
        if args.project_channels:
            gen = torch.Generator().manual_seed(0)
            points = points @ torch.randn(points.shape[2], args.project_channels, generator=gen)
        x, y = points[a].contiguous().to(device), points[b].contiguous().to(device)
        entries = x.shape[1] * y.shape[1]  # cost entries per pair
        xd = x.double().requires_grad_()
        ref = cosine_sinkhorn(xd, y.double(), eps, 20 * CAP, 1e-12, omega=OMEGA)
        (ref_grad,) = torch.autograd.grad(ref.sum(), xd)
        ref = ref.detach()
        refs = {"value": (ref, ref_grad)}
        if geo:
            refs["entropic"] = entropic_reference(x, y, eps)
        wider = f" -> {args.project_channels} channels" if args.project_channels else ""
        print(f"\n{stage} {tuple(fmap.shape[1:])}{wider}, {len(a)} pairs on {device}\n")
        print("| tau | solver | iterations | ms fwd+bwd | value error | gradient error | time / ours |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        x.requires_grad_(), y.requires_grad_()
        reachable = True  # TAUS run from the largest, and if CAP iterations miss one tau they miss the smaller ones
        floor, _, _ = timed(backward_of(lambda p, q: cosine_sinkhorn(p, q, eps, 1), x, y), args.repeats, device)
        print(f"| | one iteration (what any schedule pays: cost, kernel, value, gradient) | 1 | {floor * 1e3:.1f} "
              "| | | |")
        for tau in TAUS:
            def ours(p, q, tau=tau):
                return cosine_sinkhorn(p, q, eps, CAP, tau, omega=OMEGA)

            its = sinkhorn_potentials(cosine_cost(x, y).detach(), eps, CAP, tau, OMEGA).iterations
            rows = [("ours", its, ours, "value")]
            if args.fused:
                rows.append(("ours, fused", its,
                             lambda p, q, tau=tau: fused_cosine_sinkhorn(p, q, eps, CAP, tau, OMEGA), "value"))
            found = (fewest_iters(lambda k: lambda p, q: cosine_sinkhorn(p, q, eps, k), x, y, ref, ref_grad, tau)
                     if reachable else None)
            reachable = found is not None
            k = found or CAP  # missing tau at CAP: the time at CAP is a lower bound
            rows.append(("plain", k if found else f"> {CAP} (time at {CAP})",
                         lambda p, q, k=k: cosine_sinkhorn(p, q, eps, k), "value"))
            if pot:  # the same plain iterates as ours at omega = 1 (in exact arithmetic), so as many
                solve = pot(k, entries) if found else None
                why = "not run: " + ("one pair exceeds POT_RECORDED" if found else f"plain misses tau at {CAP}")
                rows.append(("pot", k if solve else why, solve, "value"))
            if geo:  # its own quantity, against its own converged value
                scaling = fastest_scaling(geo, x, y, *refs["entropic"], tau)
                rows.append(("geomloss", f"scaling {scaling}" if scaling else "no scaling of GEOMLOSS_SCALINGS",
                             geo(scaling) if scaling else None, "entropic"))
            base = None
            for name, shown, fn, quantity in rows:
                if fn is None:
                    print(f"| {tau:g} | {name} | {shown} | | | | |")
                    continue
                wall, _, _ = timed(backward_of(fn, x, y), args.repeats, device)
                base = base or wall
                value_err, grad_err = errors(fn, x, y, *refs[quantity])
                at_least = ">= " if name == "plain" and found is None else ""
                print(f"| {tau:g} | {name} | {shown} | {at_least}{wall * 1e3:.1f} | {value_err:.1e} | {grad_err:.1e} | "
                      f"{at_least}{wall / base:.2f} |")
                if name == "plain":  # no schedule can take less than one iteration's time
                    print(f"| {tau:g} | most any schedule can gain on plain | | | | | {at_least}{wall / floor:.2f} |")
        if args.plot:
            series = {"ours (tol)": [lambda p, q, t=t: cosine_sinkhorn(p, q, eps, CAP, t, omega=OMEGA)
                                     for t in CURVE_TOLS],
                      "plain (iterations)": [lambda p, q, k=k: cosine_sinkhorn(p, q, eps, k) for k in CURVE_ITERS]}
            if pot:
                series["POT (iterations)"] = [solve for k in CURVE_ITERS if (solve := pot(k, entries))]
            curves[stage] = {name: [(timed(backward_of(fn, x, y), 1, device)[0], errors(fn, x, y, ref, ref_grad)[0])
                                    for fn in fns] for name, fns in series.items()}
    if args.plot:
        plot(curves, args.plot, f"{cfg.model.backbone}, {args.pairs} pairs, eps {eps:g}, "
                                f"{torch.get_num_threads()} CPU threads")


def plot(curves: dict, path: str, title: str) -> None:
    """Largest relative value error against fwd+bwd time, one panel per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), squeeze=False)
    for ax, (stage, series) in zip(axes[0], curves.items()):
        for name, points in series.items():
            ax.plot([t * 1e3 for t, _ in points], [max(e, 1e-9) for _, e in points], marker="o", label=name)
        for tau in TAUS:
            ax.axhline(tau, color="grey", linewidth=0.6, linestyle=":")
        ax.set(xscale="log", yscale="log", xlabel="ms forward + backward", title=stage)
    axes[0][0].set_ylabel("largest relative value error")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
