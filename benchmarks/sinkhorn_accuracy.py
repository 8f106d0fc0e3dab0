"""How many Sinkhorn iterations the OT value needs, on feature maps of a trained model.

A fixed iteration count buys an accuracy that depends on the maps: this measures, for every stage
of a trained backbone, the relative error of the OT value <P, C> after t iterations (otface's
solver, float32, the configured eps) against the converged value (float64, ``--reference-iters``),
and the column-marginal L1 error of the plan, the quantity ``ot.tol`` stops on; hence the
iterations to reach tau = 1e-3 and 1e-4 (the largest error over the pairs).

    python benchmarks/sinkhorn_accuracy.py runs/<run>/last.pt [--pairs 64] [--eps 0.05]

The pairs are distinct image pairs of a P x K batch (16 identities x 4 images) of the run's
training set, as the OT loss sees them; the images are those of ``data.root`` or the run's
synthetic set (generated if needed). Output: a markdown table per stage.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from otface.data.transforms import network_input
from otface.eval.model import backbone_from_checkpoint
from otface.ot.sinkhorn import cosine_sinkhorn, sinkhorn_potentials
from otface.train.data import open_training_set, prepare_data

ITERATIONS = (5, 10, 20, 30, 50, 100, 200, 300, 500, 1000)
TAUS = (1e-3, 1e-4)


def batch_pairs(dataset, pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images of a 16 x 4 identity-balanced batch and ``pairs`` distinct (a, b) index pairs of it."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset.labels)
    ids = rng.choice(labels.max() + 1, 16, replace=False)
    index = np.concatenate([rng.choice(np.flatnonzero(labels == i), 4, replace=False) for i in ids])
    images = torch.stack([dataset[int(i)][0] for i in index])
    every = [(i, j) for i in range(len(index)) for j in range(i + 1, len(index))]
    chosen = rng.choice(len(every), pairs, replace=False)
    return images, torch.tensor([every[k][0] for k in chosen]), torch.tensor([every[k][1] for k in chosen])


def stage_rows(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
               reference_iters: int) -> list[tuple[int, float, float]]:
    """(iterations, largest relative value error, largest marginal L1 error) over the pairs."""
    x, y = points[a], points[b]
    reference = cosine_sinkhorn(x.double(), y.double(), eps=eps, iters=reference_iters)
    cost = 1 - F.normalize(x, dim=2) @ F.normalize(y, dim=2).transpose(1, 2)
    rows = []
    for iters in ITERATIONS:
        value = cosine_sinkhorn(x, y, eps=eps, iters=iters).double()
        f, g, _ = sinkhorn_potentials(cost, eps=eps, iters=iters)
        plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / eps)
        marginal = (plan.sum(1) - 1.0 / cost.shape[2]).abs().sum(1).max().item()
        rows.append((iters, ((value - reference).abs() / reference.abs()).max().item(), marginal))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a training checkpoint (last.pt) of a trained model")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--reference-iters", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = backbone_from_checkpoint(args.checkpoint)
    root, _ = prepare_data(cfg.data, progress=False)
    images, a, b = batch_pairs(open_training_set(root, cfg.data), args.pairs)
    with torch.no_grad():
        _, maps = model.forward_features(network_input(images, cfg.model.input_size), list(model.stage_names))
    print(f"{args.checkpoint}: {cfg.model.backbone} {cfg.model.params} at {cfg.model.input_size} px; "
          f"{args.pairs} pairs, eps {args.eps:g}; errors: the largest over the pairs")
    for stage, fmap in maps.items():
        points = fmap.flatten(2).transpose(1, 2).float()  # (N, h*w, C): Eq. 6's point clouds
        cost = 1 - F.normalize(points[a], dim=2) @ F.normalize(points[b], dim=2).transpose(1, 2)
        rows = stage_rows(points, a, b, args.eps, args.reference_iters)
        reach = {tau: next((t for t, err, _ in rows if err <= tau), math.inf) for tau in TAUS}
        print(f"\n{stage} {tuple(fmap.shape[1:])}: cost in [{cost.min():.3g}, {cost.max():.3g}], mean "
              f"{cost.mean():.3g}; iterations to tau=1e-3: {reach[1e-3]}, to 1e-4: {reach[1e-4]}\n")
        print("| iterations | value rel. error | marginal L1 error |\n|---:|---:|---:|")
        for iters, err, marginal in rows:
            print(f"| {iters} | {err:.1e} | {marginal:.1e} |")


if __name__ == "__main__":
    main()
