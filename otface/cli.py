"""Command line: ``otface train``, ``otface eval``, ``otface export``,
``otface data {align,pack,pairs,unpack}``, ``otface synth``.

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

from otface.config import Config, describe, load_config

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
    if t.get("num_skipped_records"):
        lines.append(f"left out {t['num_skipped_records']} unreadable records when opening the training set "
                     "(data.on_error=skip); first ones:")
        lines.extend(f"  record {key}: {reason}" for key, reason in t["skipped_records"][:10])
    if t.get("skipped_samples"):
        lines.append(f"skipped {t['skipped_samples']} unreadable training samples (data.on_error=skip); first ones:")
        lines.extend(f"  sample {index}: {reason}" for index, reason in t["bad_samples"][:10])
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


STANDARD_BINS = ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw")


def _bin_paths(args: argparse.Namespace) -> list[Path]:
    paths = list(args.bin or [])
    if args.bin_dir:
        found = [args.bin_dir / f"{name}.bin" for name in STANDARD_BINS if (args.bin_dir / f"{name}.bin").is_file()]
        if not found:
            raise FileNotFoundError(f"--bin-dir {args.bin_dir}: none of {', '.join(STANDARD_BINS)} (.bin) is there")
        paths += found
    return paths


def cmd_eval(args: argparse.Namespace) -> int:
    from otface.data.ijb import canonical_name
    from otface.eval.model import load_model
    from otface.eval.suite import EvalReport, evaluate_bins, evaluate_ijb_set, evaluate_megaface, markdown, \
        write_report
    from otface.train.trainer import resolve_device

    bins = _bin_paths(args)
    if not (bins or args.ijb or args.megaface):
        raise ValueError("nothing to evaluate: give --bin, --bin-dir, --ijb and/or --megaface")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    on_error = "skip" if args.skip_bad else "raise"
    report = EvalReport(model=loaded.description)
    if bins:
        evaluate_bins(loaded, bins, report, device, batch_size=args.batch_size)
    for root in args.ijb or []:
        evaluate_ijb_set(loaded, root, canonical_name(root.name), report, device, batch_size=args.batch_size,
                         on_error=on_error, num_workers=args.workers, flip_test=not args.ijb_no_flip,
                         norm_score=not args.ijb_no_norm_score, detector_score=not args.ijb_no_detector_score)
    if args.megaface:
        evaluate_megaface(loaded, args.megaface, report, device, batch_size=args.batch_size, on_error=on_error)
    out = args.out or Path(args.model).parent / "eval"
    paths = write_report(report, out)
    print(markdown(report))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from otface.eval.model import export_backbone

    print(f"exported {export_backbone(args.checkpoint, args.out)}")
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


def cmd_data_align(args: argparse.Namespace) -> int:
    from otface.data.align import align_folder

    written, skipped = align_folder(args.src, args.landmarks, args.dst, size=args.size, quality=args.quality,
                                    on_error="skip" if args.skip_bad else "raise")
    print(f"aligned {written} faces into {args.dst}")
    _print_skipped(skipped)
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    from otface.data.pack import pack_folder

    report = pack_folder(args.src, args.dst, image_size=(args.size, args.size), quality=args.quality,
                         resize=args.resize, on_error="skip" if args.skip_bad else "raise", workers=args.workers)
    print(f"packed {report.num_images} images of {report.num_identities} identities into {args.dst} "
          f"({report.num_reencoded} re-encoded)")
    if report.empty_identities:
        print(f"{len(report.empty_identities)} identities have no image: {', '.join(report.empty_identities[:10])}")
    _print_skipped(report.skipped)
    return 0


def cmd_data_pairs(args: argparse.Namespace) -> int:
    from otface.data.pairs import pairs_to_bin

    n = pairs_to_bin(args.pairs, args.images, args.out, image_size=(args.size, args.size), ext=args.ext,
                     resize=args.resize, quality=args.quality, format=args.format)
    print(f"wrote {n} pairs to {args.out}")
    return 0


def cmd_data_unpack(args: argparse.Namespace) -> int:
    from otface.data.unpack import unpack_bin, unpack_records

    if args.src.suffix == ".bin":
        print(f"wrote {unpack_bin(args.src, args.dst)} pairs as images and {args.dst / 'pairs.txt'}")
    else:
        print(f"wrote {unpack_records(args.src, args.dst)} images into {args.dst}/<identity>/")
    return 0


def _print_skipped(skipped: Sequence[tuple[Any, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable images:")
        for _, reason in skipped:
            print(f"  {reason}")


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare real data: align photos, pack a folder, convert pairs, unpack")
    commands = data.add_subparsers(dest="data_command", required=True)

    def common(parser: argparse.ArgumentParser, skip: bool = True) -> None:
        parser.add_argument("--size", type=int, default=112, help="side of the square face crops (default 112)")
        parser.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images")
        if skip:
            parser.add_argument("--skip-bad", action="store_true",
                                help="leave unreadable images out and list them (default: stop at the first)")

    align = commands.add_parser("align", help="align photos by 5 landmarks to the 112x112 ArcFace template")
    align.add_argument("src", type=Path, help="folder of photos")
    align.add_argument("landmarks", type=Path, help="text file: 'relative/path x1 y1 ... x5 y5' per line")
    align.add_argument("dst", type=Path, help="output folder (same layout, .jpg crops)")
    common(align)
    align.set_defaults(func=cmd_data_align)

    pack = commands.add_parser("pack", help="image folder root/<identity>/<image> -> insightface RecordIO")
    pack.add_argument("src", type=Path, help="image folder")
    pack.add_argument("dst", type=Path, help="output folder (train.rec, train.idx, property, classes.txt)")
    pack.add_argument("--resize", action="store_true", help="resize images of another size (default: error)")
    pack.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: this one)")
    common(pack)
    pack.set_defaults(func=cmd_data_pack)

    pairs = commands.add_parser("pairs", help="LFW-style pairs.txt (or 'path1 path2 0|1' list) -> .bin")
    pairs.add_argument("pairs", type=Path, help="pairs file")
    pairs.add_argument("images", type=Path, help="folder the pairs file refers to")
    pairs.add_argument("out", type=Path, help="output .bin")
    pairs.add_argument("--ext", default="jpg", help="image extension of LFW-style names (default jpg)")
    pairs.add_argument("--format", default="auto", choices=["auto", "lfw", "list"])
    pairs.add_argument("--resize", action="store_true", help="resize images of another size (default: error)")
    common(pairs, skip=False)
    pairs.set_defaults(func=cmd_data_pairs)

    unpack = commands.add_parser("unpack", help="RecordIO folder -> image folder, or .bin -> images + pairs.txt")
    unpack.add_argument("src", type=Path, help="RecordIO folder (train.rec, ...) or verification .bin")
    unpack.add_argument("dst", type=Path, help="output folder")
    unpack.set_defaults(func=cmd_data_unpack)


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
    _add_data_commands(sub)

    ev = sub.add_parser("eval", help="evaluate a checkpoint or exported model on benchmarks; write tables and plots")
    ev.add_argument("model", type=Path, help="training checkpoint (runs/<run>/last.pt) or exported model (.pt2)")
    ev.add_argument("--bin", type=Path, nargs="+", help="verification .bin sets (lfw.bin, agedb_30.bin, ...)")
    ev.add_argument("--bin-dir", type=Path, help="folder holding the standard sets: " + ", ".join(STANDARD_BINS))
    ev.add_argument("--ijb", type=Path, nargs="+", help="IJB set folders named IJBB / IJBC (meta/, loose_crop/)")
    ev.add_argument("--ijb-no-flip", action="store_true", help="IJB: embed the image only, not its flip too")
    ev.add_argument("--ijb-no-norm-score", action="store_true",
                    help="IJB: L2-normalise image features before pooling (default keeps their norm)")
    ev.add_argument("--ijb-no-detector-score", action="store_true",
                    help="IJB: do not weight image features by the detector (faceness) score")
    ev.add_argument("--megaface", type=Path, help="MegaFace test pack folder (facescrub_lst, megaface_lst, ...)")
    ev.add_argument("--out", type=Path, help="output folder (default: <model folder>/eval)")
    ev.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]'")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--workers", type=int, default=0, help="processes decoding and aligning IJB images")
    ev.add_argument("--skip-bad", action="store_true", help="leave unreadable IJB/MegaFace images out, count them")
    ev.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="export a checkpoint's backbone as a torch.export program (.pt2)")
    export.add_argument("checkpoint", type=Path, help="training checkpoint (runs/<run>/last.pt)")
    export.add_argument("out", type=Path, help="output file (.pt2)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # config or input data: the message names it
        print(f"otface: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
