"""Command line: ``otface train``, ``otface synth``.

``otface train`` with no arguments generates (once, cached) the synthetic face set, trains
OTFace (ArcFace + OT loss) on it, evaluates the easy and hard verification protocols, prints a
table and writes ``results.json`` into the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from otface.config import ConfigError, Config, describe, load_config

RUNS = Path("runs")


class _TqdmHandler(logging.Handler):
    """Log lines printed through tqdm so that progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(log_file: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("otface")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    console = _TqdmHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def results_table(results: dict[str, Any]) -> str:
    """A markdown table of the verification results and training figures."""
    lines = [
        "| set | pairs | accuracy (%) | std (%) | TAR@FAR=1e-3 (%) | AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["verification"].items():
        lines.append(
            f"| {name} | {r['pairs']} | {100 * r['accuracy']:.2f} | {100 * r['accuracy_std']:.2f} "
            f"| {100 * r['tar_at_far']:.2f} | {r['auc']:.4f} |"
        )
    t = results["train"]
    lines.append("")
    lines.append(
        f"trained {t['epochs']} epochs ({t['steps']} steps, {t['images']} images) in "
        f"{t['train_seconds']:.0f} s: {t['images_per_second']:.1f} images/s, "
        f"{t['hard_groups_per_step']:.1f} hard groups per step, {t['skipped_steps']} skipped steps"
    )
    return "\n".join(lines)


def _latest_run() -> Path:
    runs = sorted((p for p in RUNS.glob("*") if (p / "last.pt").is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"--resume without --out: no run with a checkpoint under {RUNS}/")
    return runs[-1]


def _default_run_dir(cfg: Config) -> Path:
    tag = cfg.head.name + ("-ot" if cfg.ot.weight > 0 else "")
    return RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"


def cmd_train(args: argparse.Namespace) -> int:
    if args.list_keys:
        for key, typ, default, help_text in describe():
            print(f"{key} ({typ}, default {default!r}): {help_text}")
        return 0
    if args.resume:
        run_dir = Path(args.out) if args.out else _latest_run()
        saved = run_dir / "config.yaml"
        if not (run_dir / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {run_dir / 'last.pt'}; nothing to resume")
        cfg = load_config(args.config or saved, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.out) if args.out else _default_run_dir(cfg)
        if (run_dir / "last.pt").exists():
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "train.log")
    logging.getLogger("otface").info("run folder: %s", run_dir)

    from otface.train.trainer import Trainer  # heavy imports only when training

    trainer = Trainer(cfg, run_dir)
    if args.resume:
        trainer.resume()
    results = trainer.train()
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(results_table(results))
    print(f"\nresults: {run_dir / 'results.json'}  ROC: {run_dir / 'roc.png'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from otface.config import SynthSection
    from otface.data.synth import generate_synthetic, write_preview
    from otface.train.data import synth_config

    cfg = synth_config(SynthSection(seed=args.seed, num_identities=args.num_identities,
                                    images_per_identity=args.images_per_identity, num_pairs=args.num_pairs,
                                    workers=args.workers))
    paths = generate_synthetic(Path(args.out), cfg, progress=True)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.preview:
        for level in ("train", "easy", "hard"):
            png = Path(args.out) / f"preview_{level}.png"
            write_preview(png, cfg, level=level)
            print(f"preview ({level}): {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otface", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: OTFace on synthetic faces) and evaluate it")
    train.add_argument("--config", type=Path, help="YAML config file (see configs/)")
    train.add_argument("--out", help="run folder (default: runs/<time>-<head>[-ot])")
    train.add_argument("--resume", action="store_true", help="continue the run in --out (or the latest run)")
    train.add_argument("--list-keys", action="store_true", help="print every config key with its default and help")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    train.set_defaults(func=cmd_train)

    from otface.config import SynthSection

    defaults = SynthSection()
    synth = sub.add_parser("synth", help="write the synthetic face set (RecordIO + .bin) to a folder")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--num-identities", type=int, default=defaults.num_identities)
    synth.add_argument("--images-per-identity", type=int, default=defaults.images_per_identity)
    synth.add_argument("--num-pairs", type=int, default=defaults.num_pairs)
    synth.add_argument("--workers", type=int, default=defaults.workers)
    synth.add_argument("--preview", action="store_true", help="also write preview grids as PNG")
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"otface: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
