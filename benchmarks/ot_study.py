"""Does the OT term help? ArcFace alone against ArcFace + OT on the synthetic faces, paired by seed.

    python benchmarks/ot_study.py --arms arcface arcface+ot --seeds 0 1 2 3 4   # run (skips runs in the JSON)
    python benchmarks/ot_study.py --gradient-ratio runs/<run>/last.pt            # OT / head gradient at the stage
    python benchmarks/ot_study.py --report                                       # tables and plots only

Every arm is the default ``otface train`` run (synthetic faces, IResNet-18 at width 1/4, 56 px,
six epochs, P x K batches of 64) on protocols of PROTOCOL_PAIRS pairs each, with only the arm's
overrides and ``train.seed`` changed: the seed changes initialisation, batch order and flips; the
data set stays fixed. Runs accumulate in benchmarks/ot_study.json (one entry per arm and seed,
with its full config, figures, machine, date and commit), so the study grows run by run; after
every run docs/experiments.md and docs/images/ot_study_*.png are rewritten from the JSON. One
command reruns any row: ``--arms <label> --seeds <seed> --force``.

Statistics: mean ± std over seeds per arm; for an arm with a baseline, the paired difference
(arm - baseline, same seed) with a 95 % t interval over the seeds both have.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent
RESULTS = HERE / "ot_study.json"
DOC = ROOT / "docs" / "experiments.md"
IMAGES = ROOT / "docs" / "images"
MAIN_SEEDS, ABLATION_SEEDS = 5, 3  # the seeds the study plans per arm
PROTOCOL_PAIRS = 6000  # per verification protocol, as LFW: a one-point difference is then measurable
SETS = ("synth_easy", "synth_hard")
MAIN_PLOT, DIFFERENCES_PLOT = "ot_study_main.png", "ot_study_differences.png"  # under IMAGES
METRICS = {"accuracy": "accuracy (%)", "tar_at_far": "TAR @ FAR 1e-3 (%)", "auc": "AUC (%)"}


def _ot(**settings: Any) -> list[str]:
    return [f"ot.{key}={value}" for key, value in settings.items()]


# label -> (overrides of the default run, baseline label for the paired difference, ablation group)
ARMS: dict[str, tuple[list[str], str | None, str]] = {
    "arcface": (["ot.weight=0"], None, "main"),
    "arcface+ot": ([], "arcface", "main"),
    "ot weight 10": (_ot(weight=10), "arcface", "weight"),
    "ot weight 100": (_ot(weight=100), "arcface", "weight"),
    "ot on layer1": (_ot(stage="layer1"), "arcface", "stage"),
    "ot on layer3": (_ot(stage="layer3"), "arcface", "stage"),
    "ot on layer4": (_ot(stage="layer4"), "arcface", "stage"),
    "ot, 32 groups": (_ot(max_groups=32), "arcface", "group cap"),
    "ot, all groups": (_ot(max_groups="null"), "arcface", "group cap"),
    "arcface, random batches": (["ot.weight=0", "data.sampler=random"], None, "sampler"),
    "arcface+ot, random batches": (["data.sampler=random"], "arcface, random batches", "sampler"),
    "am-softmax": (["ot.weight=0", "head.name=cosface", 'head.params={"scale": 32.0, "margin": 0.35}'], None,
                   "am-softmax"),
    "am-softmax+ot": (["head.name=cosface", 'head.params={"scale": 32.0, "margin": 0.35}'], "am-softmax",
                      "am-softmax"),
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def overrides_of(label: str, seed: int) -> list[str]:
    return [f"data.synthetic.num_pairs={PROTOCOL_PAIRS}", *ARMS[label][0], f"train.seed={seed}",
            "train.progress=false"]


def run_arm(label: str, seed: int, runs: Path, shared: bool = False) -> dict[str, Any]:
    """Train one arm with one seed; its entry of the JSON (``shared``: other work ran alongside,
    so its times are not comparable)."""
    from otface.config import load_config
    from otface.train.trainer import Trainer

    cfg = load_config(None, overrides_of(label, seed))
    out = runs / f"{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}_seed{seed}"
    start = time.perf_counter()
    result = Trainer(cfg, out).train()
    run_seconds = time.perf_counter() - start
    history = result["train"]["history"]
    terms = {key: float(np.mean([row[key] for row in history])) for key in history[-1] if key.endswith("_loss")}
    return {
        "arm": label,
        "seed": seed,
        "overrides": overrides_of(label, seed),
        "verification": {name: {k: r.get(k) for k in ("accuracy", "accuracy_std", "tar_at_far", "far", "far_target",
                                                      "auc", "pairs")}
                         for name, r in result["verification"].items()},
        "mean_terms": terms,
        "hard_groups_per_step": result["train"]["hard_groups_per_step"],
        "train_seconds": result["train"]["train_seconds"],
        "run_seconds": run_seconds,
        "threads": torch.get_num_threads(),
        "shared": shared,
        "images_per_second": result["train"]["images_per_second"],
        "config": result["config"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
    }


def gradient_ratio(checkpoint: Path, batches: int = 8) -> dict[str, float]:
    """‖dL_OT/dF‖ / ‖dL_head/dF‖ at the OT stage's feature maps F of a trained default run, over
    ``batches`` training batches (weight 1): how strongly the OT term pulls against the head."""
    from otface.checkpoint import load_checkpoint
    from otface.config import config_from_dict
    from otface.train.trainer import Trainer

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run")
        trainer.resume(ckpt)
        ot = next(term for term in trainer.terms if term.name == "ot")
        ratios = []
        for position, (images, labels, bad) in enumerate(trainer._loader()):
            if position == batches:
                break
            inputs, labels = trainer._micro_batch(images, labels, bad, position)
            emb, features = trainer.model(inputs)
            fmap = features[ot.stage]
            head = trainer.head(emb, labels)
            ot_loss, _ = ot(emb, labels, trainer.full_head, features)
            (g_head,) = torch.autograd.grad(head, fmap, retain_graph=True)
            (g_ot,) = torch.autograd.grad(ot_loss, fmap, allow_unused=True)
            ratios.append(0.0 if g_ot is None else (g_ot.norm() / g_head.norm()).item())
    return {"stage": ot.stage, "batches": batches, "mean": float(np.mean(ratios)), "min": float(np.min(ratios)),
            "max": float(np.max(ratios)), "checkpoint": str(checkpoint)}


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def figure(run: dict[str, Any], name: str, metric: str) -> float | None:
    value = run["verification"][name].get(metric)
    return None if value is None else 100.0 * value


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: seeds, mean/std of each figure, and the paired difference to its baseline."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    out = {}
    for label, seeds in by_arm.items():
        stats: dict[str, Any] = {"seeds": sorted(seeds), "figures": {}, "paired": {}}
        baseline = by_arm.get(ARMS[label][1]) if label in ARMS and ARMS[label][1] else None
        common = sorted(set(seeds) & set(baseline)) if baseline else []  # the paired seeds
        for name in SETS:
            for metric in METRICS:
                values = [figure(seeds[s], name, metric) for s in sorted(seeds)]
                values = [v for v in values if v is not None]
                if values:
                    stats["figures"][f"{name}/{metric}"] = (float(np.mean(values)),
                                                            float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
                if baseline:
                    diffs = [figure(seeds[s], name, metric) - figure(baseline[s], name, metric) for s in common
                             if figure(seeds[s], name, metric) is not None
                             and figure(baseline[s], name, metric) is not None]
                    if len(diffs) == 1:  # a difference, no interval
                        stats["paired"][f"{name}/{metric}"] = (diffs[0], None, None, 1)
                    elif len(diffs) >= 2:
                        mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
                        half = _t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
                        stats["paired"][f"{name}/{metric}"] = (mean, mean - half, mean + half, len(diffs))
        quiet = [r["train_seconds"] for r in seeds.values() if not r.get("shared")]
        stats["seconds"] = float(np.mean(quiet)) if quiet else None
        if baseline:
            pairs = [(seeds[s]["train_seconds"], baseline[s]["train_seconds"]) for s in common
                     if not seeds[s].get("shared") and not baseline[s].get("shared")]
            stats["time_ratio"] = (float(np.mean([a / b for a, b in pairs])), len(pairs)) if pairs else None
        stats["commits"] = sorted({r["commit"] for r in seeds.values()})
        stats["groups"] = float(np.mean([r["hard_groups_per_step"] for r in seeds.values()]))
        stats["ot_loss"] = float(np.mean([r["mean_terms"].get("ot_loss", 0.0) for r in seeds.values()]))
        out[label] = stats
    return out


def write_report(data: dict[str, Any]) -> None:
    """docs/experiments.md and its plots, from the JSON only."""
    runs = data.get("runs", [])
    stats = summarise(runs)
    wall = sum(r["train_seconds"] for r in runs) / 3600
    core = sum(r["train_seconds"] * r.get("threads", 2) for r in runs) / 3600  # the runs before "threads": 2
    whole = [r["run_seconds"] / r["train_seconds"] for r in runs if "run_seconds" in r]
    impostors = PROTOCOL_PAIRS // 2 * 9 // 10  # the impostor pairs of nine folds, which set a fold's threshold
    lines = [
        "# Experiments: does the OT term help?",
        "",
        "Generated by `python benchmarks/ot_study.py --report` from `benchmarks/ot_study.json`; every figure",
        "below is that file's. Each arm is the default `otface train` run on the synthetic faces with the",
        f"overrides shown, on verification protocols of {PROTOCOL_PAIRS} pairs each (half genuine), seeds as",
        "listed (a seed changes initialisation, batch order and flips; the images are the same). Accuracy",
        "is insightface's 10-fold protocol; TAR at FAR 1e-3 with thresholds from the other nine folds; AUC",
        "of the ROC. Mean ± std over seeds; Δ: the paired difference to the arm's baseline (same seeds)",
        "with its 95 % t interval, in points. s / run: training time, over the runs that had the machine",
        "to themselves (runs marked `shared` in the JSON ran two at a time, one thread each). No TAR at FAR",
        f"1e-4: the thresholds come from {impostors} impostor pairs (nine folds), so FAR 1e-4 "
        "would rest on a fraction of one pair, and each fold's threshold at FAR 1e-3 on about "
        f"{impostors / 1000:.0f} of them.",
        "`python benchmarks/ot_study.py --arms '<arm>' --seeds <seed> --force` reruns any row's run: the JSON keeps "
        "its config, and at the row's commit and thread count (`threads`) a CPU gives the same figures.",
        "",
        f"Cost so far: {len(runs)} runs, {wall:.1f} hours of training wall time, {core:.1f} core-hours, on "
        f"{', '.join(sorted({r['machine'] for r in runs})) or 'no machine yet'}"
        + (f"; a whole run (training, then embedding and scoring the {2 * PROTOCOL_PAIRS} protocol pairs) takes "
           f"{np.mean(whole):.2f}x its training time" if whole else "") + ".",
        "",
    ]
    quiet = [r["train_seconds"] for r in runs if not r.get("shared")]
    if quiet and whole:
        wanted = {label: MAIN_SEEDS if g == "main" else ABLATION_SEEDS for label, (_, _, g) in ARMS.items()}
        planned = sum(wanted.values())
        missing = sum(max(0, want - len(stats.get(label, {}).get("seeds", []))) for label, want in wanted.items())
        hours = planned * np.mean(quiet) * np.mean(whole) / 3600
        lines += [f"The whole study as planned ({MAIN_SEEDS} seeds per main arm, {ABLATION_SEEDS} per ablation arm: "
                  f"{planned} runs) " + ("is complete; it " if not missing else f"has {missing} runs to go; it ")
                  + f"costs about {hours:.1f} hours of this machine, one run at a time: an estimate, the mean "
                  f"training time of the {len(quiet)} unshared runs, {np.mean(quiet):.0f} s, times that ratio.", ""]
    for group in dict.fromkeys(g for _, _, g in ARMS.values()):
        labels = [label for label, (_, _, g) in ARMS.items() if g == group and label in stats]
        if not labels:
            continue
        lines += [f"## {group}", "", "| arm | overrides | seeds | " + " | ".join(
            f"{name.removeprefix('synth_')} {METRICS[m]}" for name in SETS for m in METRICS) + " | hard groups / step "
            "| OT loss | s / run | commits |", "|---|---|---|" + "---:|" * (len(SETS) * len(METRICS) + 3) + "---|"]
        for label in labels:
            s = stats[label]
            cells = []
            for name in SETS:
                for m in METRICS:
                    key = f"{name}/{m}"
                    mean, sd = s["figures"].get(key, (None, None))
                    cell = "–" if mean is None else f"{mean:.2f}" + (f" ± {sd:.2f}" if len(s["seeds"]) > 1 else "")
                    if key in s["paired"]:
                        d, lo, hi, _ = s["paired"][key]
                        cell += f"<br>Δ {d:+.2f} " + ("(one seed)" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]")
                    cells.append(cell)
            over = " ".join(f"`{o}`" for o in ARMS[label][0]) or "(the default run)"
            lines.append(f"| {label} | {over} | {', '.join(map(str, s['seeds']))} | " + " | ".join(cells)
                         + f" | {s['groups']:.1f} | {s['ot_loss']:.4f} | "
                         + ("–" if s["seconds"] is None else f"{s['seconds']:.0f}") + f" | {', '.join(s['commits'])} |")
        lines.append("")
    if data.get("gradient_ratio"):
        g = data["gradient_ratio"]
        lines += ["## The OT term's pull", "",
                  f"‖dL_OT/dF‖ / ‖dL_head/dF‖ at {g['stage']}'s feature maps F of the trained default run, weight 1, "
                  f"over {g['batches']} training batches: mean {g['mean']:.3g} (min {g['min']:.3g}, max "
                  f"{g['max']:.3g}).", ""]
    lines += ["## What the evidence says", "", *findings(stats), ""]
    if plot(runs):
        lines += [f"![the main arms per seed](images/{MAIN_PLOT})", ""]
    if plot_differences(stats):
        lines += [f"![every arm's paired difference to its baseline](images/{DIFFERENCES_PLOT})", ""]
    DOC.write_text("\n".join(lines) + "\n")


def below(differences: list[float]) -> str:
    """'k has' / 'k have': how many of the mean differences are negative."""
    k = sum(d < 0 for d in differences)
    return f"{k} {'has' if k == 1 else 'have'}"


def findings(stats: dict[str, dict[str, Any]]) -> list[str]:
    """What the JSON shows, in sentences generated from its figures: per arm with a baseline, the
    paired accuracy differences and whether their intervals exclude 0; the OT term's time cost."""
    out = []
    excluding = []
    single = []
    for label, (_, base, _) in ARMS.items():
        s = stats.get(label)
        if not s or "synth_easy/accuracy" not in s["paired"]:
            continue
        if s["paired"]["synth_easy/accuracy"][3] == 1:
            easy, hard = (s["paired"][f"{name}/accuracy"][0] for name in SETS)
            single.append(f"{label} (easy {easy:+.2f}, hard {hard:+.2f})")
            continue
        parts = []
        for name in SETS:
            d, lo, hi, n = s["paired"][f"{name}/accuracy"]
            parts.append(f"{name.removeprefix('synth_')} {d:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            if lo > 0 or hi < 0:
                excluding.append(f"{label} ({name.removeprefix('synth_')}: {'better' if lo > 0 else 'worse'})")
        out.append(f"- {label} against {base}, {n} paired seeds: accuracy " + ", ".join(parts) + " points.")
    tested = len(out)
    if excluding:
        out.append(f"- Intervals excluding 0: {'; '.join(excluding)}. With {2 * tested} accuracy intervals at 95 %, "
                   f"about {0.05 * 2 * tested:.1f} would exclude 0 by chance alone.")
    elif tested:
        out.append(f"- {'Both' if tested == 1 else f'All {2 * tested}'} accuracy intervals contain 0: no arm shows "
                   "evidence that the OT term helps or hurts verification accuracy on this task, at these seed counts.")
    means = {name: [s["paired"][f"{name}/accuracy"][0] for label, s in stats.items()
                    if label in ARMS and ARMS[label][1] and f"{name}/accuracy" in s["paired"]] for name in SETS}
    if len(means[SETS[0]]) > 1:
        out.append(f"- Signs: of the {len(means[SETS[0]])} arms with the OT term, "
                   + ", ".join(f"{below(ds)} a lower mean {name.removeprefix('synth_')} accuracy "
                               "than their baseline" for name, ds in means.items())
                   + " (not independent tests: the arms share their baselines' runs).")
    if single:
        out.append("- One paired seed so far, so no interval (difference to the baseline, in points): "
                   + "; ".join(single) + ".")
    ot = stats.get("arcface+ot", {})
    if ot.get("time_ratio"):
        ratio, n = ot["time_ratio"]
        out.append(f"- Cost: the OT term (default settings) takes {100 * (ratio - 1):.0f} % more training time than "
                   f"ArcFace alone (mean over {n} seeds that had the machine to themselves; OT runs at commit "
                   f"{', '.join(ot['commits'])}; benchmarks/RESULTS.md times the step of later commits).")
    scale = HERE / "hard_groups_at_scale.json"
    if scale.is_file():
        rows = json.loads(scale.read_text())["rows"]
        small = [r for r in rows if r["batch"] == 128]
        out.append(f"- Random batches at MS1MV2 scale (benchmarks/hard_groups_at_scale.py): a batch of 128 holds "
                   f"{min(r['simulated'] for r in small):.2f}-{max(r['simulated'] for r in small):.2f} same-identity "
                   f"pairs on average and {100 * min(r['batches_without_any'] for r in small):.0f}-"
                   f"{100 * max(r['batches_without_any'] for r in small):.0f} % of batches hold none; a P x K batch "
                   f"of 128 holds {small[0]['pk_pairs']}: the paper's randomly sampled batches give the OT term almost "
                   "nothing to act on.")
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, name: str, title: str) -> None:
    """The figure, titled, as docs/images/<name>."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGES / name, dpi=110)
    plt.close(fig)


def plot(runs: list[dict[str, Any]]) -> bool:
    """Per seed, the main arms' accuracy and TAR on both protocols, lines joining a seed's pair, as
    docs/images/MAIN_PLOT; False (nothing written) without runs of the main arms."""
    main = [label for label, (_, _, g) in ARMS.items() if g == "main"]
    if not any(r["arm"] in main for r in runs):
        return False
    plt = _pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    panels = [(name, m) for m in ("accuracy", "tar_at_far") for name in SETS]
    for ax, (name, metric) in zip(axes, panels):
        by_seed: dict[int, dict[str, float]] = {}
        for r in runs:
            if r["arm"] in main and figure(r, name, metric) is not None:
                by_seed.setdefault(r["seed"], {})[r["arm"]] = figure(r, name, metric)
        for seed, values in sorted(by_seed.items()):
            xs = [i for i, label in enumerate(main) if label in values]
            ax.plot(xs, [values[main[i]] for i in xs], marker="o", color="grey", alpha=0.6)
        ax.set_xticks(range(len(main)), main)
        ax.set_xlim(-0.4, len(main) - 0.6)
        ax.set_title(f"{name}: {METRICS[metric]}", fontsize=9)
    _save(plt, fig, MAIN_PLOT, "ArcFace alone and with the OT term, one line per seed")
    return True


def plot_differences(stats: dict[str, dict[str, Any]]) -> bool:
    """Every arm's paired accuracy difference to its baseline with its 95 % interval (a dot alone
    for one seed), easy and hard protocol side by side, as docs/images/DIFFERENCES_PLOT; False
    (nothing written) when no arm has a paired seed."""
    labels = [label for label in ARMS if "synth_easy/accuracy" in stats.get(label, {}).get("paired", {})]
    if not labels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SETS), figsize=(10, 0.45 * len(labels) + 1.4), sharey=True)
    for ax, name in zip(axes, SETS):
        for row, label in enumerate(labels):
            d, lo, hi, n = stats[label]["paired"][f"{name}/accuracy"]
            if lo is None:
                ax.plot(d, row, marker="o", mfc="none", color="black")
            else:
                ax.errorbar(d, row, xerr=[[d - lo], [hi - d]], marker="o", color="black", capsize=3)
            ax.annotate(f"n={n}", (1.0, row), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{name}: accuracy, arm - baseline (points)", fontsize=9)
    axes[0].set_yticks(range(len(labels)), [f"{label} - {ARMS[label][1]}" for label in labels], fontsize=8)
    axes[0].invert_yaxis()
    _save(plt, fig, DIFFERENCES_PLOT, "Paired by seed; bars: 95 % t interval; open dot: one seed, no interval")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=[], choices=list(ARMS), metavar="LABEL")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--force", action="store_true", help="rerun runs already in the JSON")
    parser.add_argument("--runs", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--gradient-ratio", type=Path, default=None, metavar="CHECKPOINT")
    parser.add_argument("--report", action="store_true", help="only rewrite the doc and plots from the JSON")
    parser.add_argument("--shared", action="store_true",
                        help="other work runs alongside: record the runs' times as not comparable")
    args = parser.parse_args()
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
    if args.gradient_ratio:
        data["gradient_ratio"] = gradient_ratio(args.gradient_ratio)
        print(data["gradient_ratio"])
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp)
        for label in args.arms:
            for seed in args.seeds:
                done = [r for r in data["runs"] if r["arm"] == label and r["seed"] == seed]
                if done and not args.force:
                    continue
                print(f"== {label}, seed {seed}", flush=True)
                entry = run_arm(label, seed, runs, args.shared)
                data["runs"] = [r for r in data["runs"] if not (r["arm"] == label and r["seed"] == seed)] + [entry]
                RESULTS.write_text(json.dumps(data, indent=1) + "\n")
                write_report(data)
    write_report(data)


if __name__ == "__main__":
    main()
