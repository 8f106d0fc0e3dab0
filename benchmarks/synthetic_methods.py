"""Every head and auxiliary loss on the default synthetic run: does it still learn, at the same budget?

    python benchmarks/synthetic_methods.py [--methods arcface cosface ...] [--runs DIR]

Each method is the default ``otface train`` (synthetic faces, IResNet-18/4 at 56 px, six epochs,
OT on ``layer2``) with only the head or one auxiliary loss changed (``METHODS``). Results
accumulate in ``benchmarks/synthetic_methods.json`` (one entry per method, with the machine and
date) so that the slow runs (about 6 minutes each on 2 cores) can be spread over several sessions;
``benchmarks/synthetic_methods.md`` is rewritten from it after every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import tempfile
from pathlib import Path

from otface.config import load_config
from otface.train.trainer import Trainer

HERE = Path(__file__).parent
RESULTS = HERE / "synthetic_methods.json"
TABLE = HERE / "synthetic_methods.md"


def _head(name: str, **params: float) -> list[str]:
    return [f"head.name={name}", "head.params=" + json.dumps(params)]


def _aux(name: str, weight: float, **params: float | str) -> list[str]:
    return [f"losses.{name}=" + json.dumps({"weight": weight, "params": params})]


# label -> config overrides of the default run; heads keep the default run's s = 32
METHODS: dict[str, list[str]] = {
    "arcface (default)": [],
    "softmax": _head("softmax"),
    "normface": _head("normface", scale=32.0),
    "sphereface": _head("sphereface"),
    "cosface": _head("cosface", scale=32.0, margin=0.35),
    "combined": _head("combined", scale=32.0),
    "curricular": _head("curricular", scale=32.0),
    "elastic_arc": _head("elastic_arc", scale=32.0),
    "elastic_arc_plus": _head("elastic_arc_plus", scale=32.0),
    "elastic_cos": _head("elastic_cos", scale=32.0),
    "elastic_cos_plus": _head("elastic_cos_plus", scale=32.0),
    "mv_am": _head("mv_am", scale=32.0),
    "mv_arc": _head("mv_arc", scale=32.0),
    "focal_arcface": _head("focal_arcface", scale=32.0, margin=0.5),
    "hm_arcface": _head("hm_arcface", scale=32.0, margin=0.5),
    "arcface, no OT": ["ot.weight=0"],
    "+ discface (0.2)": _aux("discface", 0.2),
    "+ center (0.003)": _aux("center", 0.003),
    "+ triplet semi-hard (1.0)": _aux("triplet", 1.0, mining="semi_hard"),
    "+ triplet batch-hard (1.0)": _aux("triplet", 1.0, mining="batch_hard"),
    "+ contrastive (1.0)": _aux("contrastive", 1.0),
}


def run_method(label: str, runs: Path) -> dict:
    cfg = load_config(None, METHODS[label] + ["train.progress=false"])
    out = runs / re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    result = Trainer(cfg, out).train()
    verification = {name: {"accuracy": r["accuracy"], "accuracy_std": r["accuracy_std"], "auc": r["auc"]}
                    for name, r in result["verification"].items()}
    return {
        "overrides": METHODS[label],
        "verification": verification,
        "train_seconds": result["train"]["train_seconds"],
        "images_per_second": result["train"]["images_per_second"],
        "final_loss": result["train"]["final_loss"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }


def write_table(results: dict[str, dict]) -> None:
    lines = [
        "# Every method on the default synthetic run",
        "",
        "Written by `python benchmarks/synthetic_methods.py` from `synthetic_methods.json`: the default",
        "`otface train` run with only the head or one auxiliary loss changed (see `METHODS` there).",
        "Accuracy over 1000 pairs per protocol, mean ± std over 10 folds; chance is 50 %. Training times",
        "are wall-clock on a shared 2-core machine where other jobs ran beside some of the runs: compare",
        "the accuracies (same seed, same budget), not the times.",
        "",
        "| method | synth_easy (%) | synth_hard (%) | training (s) | images/s | final loss | machine, date |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label in METHODS:
        if label not in results:
            lines.append(f"| {label} | not run yet | | | | | |")
            continue
        r = results[label]
        acc = {k: f"{100 * v['accuracy']:.2f} ± {100 * v['accuracy_std']:.2f}" for k, v in r["verification"].items()}
        lines.append(f"| {label} | {acc.get('synth_easy', '')} | {acc.get('synth_hard', '')} | "
                     f"{r['train_seconds']:.0f} | {r['images_per_second']:.1f} | {r['final_loss']:.3f} | "
                     f"{r['machine']}, {r['date']} |")
    TABLE.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="LABEL")
    parser.add_argument("--runs", type=Path, default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        for label in args.methods:
            print(f"== {label}", flush=True)
            results[label] = run_method(label, runs)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            write_table(results)


if __name__ == "__main__":
    main()
