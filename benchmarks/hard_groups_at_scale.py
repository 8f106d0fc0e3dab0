"""Does a randomly sampled batch of an MS1MV2-sized set give the OT term anything to work on?

    python benchmarks/hard_groups_at_scale.py [--batches 2000] [--seed 0]

A hard group (Algorithm 1, Eq. 1) needs an anchor and a positive of the same identity in the batch.
The OTFace paper samples its batches at random from MS1MV2 (85,742 identities, 5,822,653 images);
this counts, by simulation and in closed form, the same-identity pairs in random batches of 128 and
512 images per process, against a P x K sampler (K = 4 images of each of B / K identities).

Class sizes are a stated model, not MS1MV2's published histogram (which its release does not
give): log-normal sizes with the set's mean of 67.9 images per identity and a coefficient of
variation ``cv`` (0: every identity the same size), at least 2 images each, rescaled to the set's
total. The closed form: with n_k images of identity k and N in all, a batch of B drawn without
replacement holds C(B, 2) sum_k n_k (n_k - 1) / (N (N - 1)) same-identity pairs on average, about
C(B, 2) (1 + cv^2) / K for K identities.

Prints a markdown table and writes benchmarks/hard_groups_at_scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

IDENTITIES = 85_742
IMAGES = 5_822_653
BATCHES = (128, 512)
CVS = (0.0, 0.5, 1.0)
PK_IMAGES = 4  # K of the P x K sampler of the default run
OUT = Path(__file__).with_suffix(".json")


def class_sizes(cv: float, rng: np.random.Generator) -> np.ndarray:
    """IDENTITIES sizes >= 2 summing to IMAGES, log-normal with coefficient of variation ``cv``."""
    mean = IMAGES / IDENTITIES
    if cv == 0:
        sizes = np.full(IDENTITIES, mean)
    else:
        sigma = math.sqrt(math.log1p(cv * cv))
        sizes = rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma, IDENTITIES)
    sizes = np.maximum(2, np.round(sizes * IMAGES / sizes.sum())).astype(np.int64)
    diff = IMAGES - int(sizes.sum())  # rounding: one image more or less for the |diff| largest identities
    sizes[np.argsort(-sizes, kind="stable")[:abs(diff)]] += int(np.sign(diff))
    return sizes


def expected_pairs(sizes: np.ndarray, batch: int) -> float:
    """Mean same-identity pairs in a batch of ``batch`` images drawn without replacement."""
    total = int(sizes.sum())
    return math.comb(batch, 2) * float((sizes * (sizes - 1)).sum()) / (total * (total - 1))


def simulate(sizes: np.ndarray, batch: int, batches: int, rng: np.random.Generator) -> dict[str, float]:
    """Same-identity pairs per random batch (mean, and the fraction of batches with none)."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    pairs = np.empty(batches)
    for b in range(batches):
        counts = np.bincount(labels[rng.choice(len(labels), batch, replace=False)])
        pairs[b] = (counts * (counts - 1) // 2).sum()
    return {"mean": float(pairs.mean()), "sem": float(pairs.std(ddof=1) / math.sqrt(batches)),
            "none": float((pairs == 0).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000, help="simulated batches per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for cv in CVS:
        sizes = class_sizes(cv, rng)
        for batch in BATCHES:
            sim = simulate(sizes, batch, args.batches, rng)
            rows.append({"cv": cv, "batch": batch, "closed_form": expected_pairs(sizes, batch),
                         "simulated": sim["mean"], "simulated_sem": sim["sem"], "batches_without_any": sim["none"],
                         "pk_pairs": batch // PK_IMAGES * math.comb(PK_IMAGES, 2),
                         "sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                   "max": int(sizes.max()), "total": int(sizes.sum())}})
    OUT.write_text(json.dumps({"identities": IDENTITIES, "images": IMAGES, "batches_simulated": args.batches,
                               "seed": args.seed, "rows": rows}, indent=1) + "\n")
    print("| class-size cv | batch | same-identity pairs, closed form | simulated (± s.e.) | batches with none "
          "| P x K (K = 4) |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cv']:g} | {r['batch']} | {r['closed_form']:.3f} | {r['simulated']:.3f} ± "
              f"{r['simulated_sem']:.3f} | {100 * r['batches_without_any']:.1f} % | {r['pk_pairs']} |")


if __name__ == "__main__":
    main()
