"""Command line: ``otface train``, ``otface eval``, ``otface export``, ``otface embed``,
``otface configs``, ``otface data {align,pack,pairs,unpack}``, ``otface synth``; ``python -m otface``
is the same (the form torchrun starts).

``otface train`` with no arguments generates (once, cached) the synthetic face set, trains
OTFace (ArcFace + OT loss) on it, evaluates the easy and hard verification protocols, prints a
table and writes ``results.json`` into the run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from otface.allocator import retain_freed_memory
from otface.config import Config, config_from_dict, describe, load_config
from otface.errors import ConfigError, InputNotFoundError, ModelFileError, OtfaceError, RunError, one_line
from otface.files import write_text_atomic
from otface.logs import log_to_file, setup_logging
from otface.train.report import results_table

RUNS = Path("runs")
ARCH_HELP = ("the architecture of a bare backbone state dict (insightface's backbone.pth): insightface's names "
             "r18 ... r200, mbf, or ours; built at insightface's settings, 112 px and 512-d")
# what the machine, not otface, says of a path the user gave: reported in one line, as user errors are
ENVIRONMENT_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                                errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def _latest_run(checkpoint: str) -> Path:
    runs = sorted((p for p in RUNS.glob("*") if (p / checkpoint).is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise InputNotFoundError(f"--resume without --out: no run with a checkpoint under {RUNS}/")
    return runs[-1]


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse reports anything else in one line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _resumed_dir(args: argparse.Namespace) -> Path:
    """The run folder ``--resume`` continues: ``--out``, or the latest run with a checkpoint."""
    from otface.train.run_folder import CHECKPOINT

    return Path(args.out) if args.out else _latest_run(CHECKPOINT)


def _default_run_dir(cfg: Config) -> Path:
    tag = cfg.head.name + ("-ot" if cfg.ot.weight > 0 else "")
    return RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"


def _resumed_config(args: argparse.Namespace, path: Path) -> tuple[Config, dict[str, Any], dict[str, list[Any]]]:
    """(config, checkpoint, settings changed) of ``--resume``: the checkpoint's config (or
    ``--config``) with the overrides, checked against the checkpoint's (:mod:`otface.train.resume`)."""
    from otface.checkpoint import check_entries, load_checkpoint
    from otface.train.resume import resume_changes

    if not path.is_file():
        raise InputNotFoundError(f"--resume: no checkpoint {path}; nothing to resume")
    ckpt = load_checkpoint(path)
    check_entries(ckpt, path, ("config", "train_state"))
    try:
        saved = config_from_dict(ckpt["config"])
        epochs_done = int(ckpt["train_state"]["epoch"])
    except (ConfigError, KeyError, TypeError) as err:
        raise ModelFileError(f"{path}: its config or train state is not one this version reads: {err}") from None
    cfg = load_config(args.config, args.overrides, base=None if args.config else ckpt["config"])
    return cfg, ckpt, resume_changes(saved, cfg, epochs_done)


def _process_prefix() -> str:
    """"[rank k] " in a process torchrun started, so that the lines of the processes tell apart."""
    return f"[rank {os.environ['RANK']}] " if os.environ.get("WORLD_SIZE", "1") != "1" and "RANK" in os.environ else ""


def cmd_configs(args: argparse.Namespace) -> int:
    from otface.config import config_description, packaged_configs

    recipes = packaged_configs()
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {config_description(path)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.list_keys:
        for key, typ, default, help_text in describe():
            print(f"{key} ({typ}, default {default!r}): {help_text}")
        return 0
    from otface.train.run_folder import CHECKPOINT, hold_run_folder

    if args.print_config:
        if args.resume:
            cfg = _resumed_config(args, _resumed_dir(args) / CHECKPOINT)[0]
        else:
            cfg = load_config(args.config, args.overrides)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from otface.train.distributed import broadcast_value, close_distributed, init_distributed, training_device

    with contextlib.ExitStack() as stack:
        stack.callback(close_distributed)
        if args.resume:
            run_dir = _resumed_dir(args)
            if os.environ.get("RANK", "0") == "0":  # rank 0 of a torchrun launch, or the one process
                stack.enter_context(hold_run_folder(run_dir))
            cfg, ckpt, changes = _resumed_config(args, run_dir / CHECKPOINT)
            procs = init_distributed(training_device(cfg.train.device))
        else:
            cfg = load_config(args.config, args.overrides)
            procs = init_distributed(training_device(cfg.train.device))
            run_dir = Path(broadcast_value(str(args.out or _default_run_dir(cfg)), procs))  # rank 0's time
            if procs.is_main:
                stack.enter_context(hold_run_folder(run_dir))
                if (run_dir / CHECKPOINT).exists():
                    raise RunError(f"{run_dir} already holds a run: pass --resume to continue it, or another --out")
        if procs.is_main:
            stack.enter_context(log_to_file(run_dir / "train.log"))
        else:
            logging.getLogger("otface").setLevel(logging.WARNING)
        logging.getLogger("otface").info("run folder: %s", run_dir)
        from otface.train.trainer import Trainer  # heavy imports only when training

        trainer = Trainer(cfg, run_dir, procs)
        if args.resume:
            trainer.resume(ckpt, changes)
        results = trainer.train()
        if not procs.is_main:
            return 0
        write_text_atomic(run_dir / "results.json", json.dumps(results, indent=2))
    print(results_table(results))
    print(f"\nresults: {run_dir / 'results.json'}  ROC: {run_dir / 'roc.png'}")
    return 0


STANDARD_BINS = ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw")


def _bin_paths(args: argparse.Namespace) -> list[Path]:
    paths = list(args.bin or [])
    if args.bin_dir:
        found = [args.bin_dir / f"{name}.bin" for name in STANDARD_BINS if (args.bin_dir / f"{name}.bin").is_file()]
        if not found:
            raise InputNotFoundError(f"--bin-dir {args.bin_dir}: none of {', '.join(STANDARD_BINS)} (.bin) is there")
        paths += found
    return paths


def cmd_eval(args: argparse.Namespace) -> int:
    from otface.data.testpacks.ijb import canonical_name
    from otface.eval.model import load_model
    from otface.eval.suite import EvalReport, evaluate_bins, evaluate_ijb_set, evaluate_megaface, markdown, write_report
    from otface.train.distributed import resolve_device

    bins = _bin_paths(args)
    if not (bins or args.ijb or args.megaface):
        raise ConfigError("nothing to evaluate: give --bin, --bin-dir, --ijb and/or --megaface")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device, trust_exported=args.trust_model, arch=args.arch)
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
    from otface.eval.model import export_backbone, export_checkpoint_onnx, onnx_support

    if args.out.suffix != ".onnx":
        print(f"exported {export_backbone(args.checkpoint, args.out, args.arch)}")
        return 0
    out = export_checkpoint_onnx(args.checkpoint, args.out, args.arch)
    broken = onnx_support().validate_onnx(out)
    if broken:  # otface's own export breaking a rule is a bug
        raise AssertionError(f"{out} breaks the ONNX model rules: {'; '.join(broken)}")
    print(f"exported {out} (one file, dynamic batch, float32; passes the insightface model-validator rules)")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from otface.data.tools.align import align_folder
    from otface.eval.embed import embed_files, image_list
    from otface.eval.model import load_model
    from otface.files import write_bytes_atomic, write_text_atomic
    from otface.train.distributed import resolve_device

    if args.out.suffix != ".npy":
        raise ConfigError(f"{args.out}: the embeddings are written as .npy; name the output file *.npy")
    index = args.out.with_suffix(".names.txt")
    if index.exists() and args.images.exists() and index.samefile(args.images):
        raise ConfigError(f"{args.out}: its index {index} would replace the image list; choose another name")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device, trust_exported=args.trust_model, arch=args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.images
        if args.landmarks:
            align_folder(args.images, args.landmarks, Path(tmp) / "aligned", size=112, progress=False)
            source = Path(tmp) / "aligned"
        root, names = image_list(source)
        emb = embed_files(loaded.model, root, names, loaded.input_size, args.batch_size, device)
    buffer = io.BytesIO()
    np.save(buffer, emb.numpy())
    write_bytes_atomic(args.out, buffer.getvalue())
    write_text_atomic(index, "".join(name + "\n" for name in names))
    print(f"{len(names)} embeddings of dimension {emb.shape[1]} ({loaded.description}): {args.out}; "
          f"row i is the image on line i of {index}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from otface.config import SynthSection
    from otface.synth import generate_synthetic, write_preview

    cfg = SynthSection(seed=args.seed, num_identities=args.num_identities, images_per_identity=args.images_per_identity,
                       num_pairs=args.num_pairs, workers=args.workers)
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
    from otface.data.tools.align import align_folder

    written, skipped = align_folder(args.src, args.landmarks, args.dst, size=args.size, quality=args.quality,
                                    on_error="skip" if args.skip_bad else "raise")
    print(f"aligned {written} faces into {args.dst}")
    _print_skipped(skipped)
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    from otface.data.tools.pack import pack_folder

    report = pack_folder(args.src, args.dst, image_size=(args.size, args.size), quality=args.quality,
                         resize=args.resize, on_error="skip" if args.skip_bad else "raise", workers=args.workers)
    print(f"packed {report.num_images} images of {report.num_identities} identities into {args.dst} "
          f"({report.num_reencoded} re-encoded)")
    if report.empty_identities:
        print(f"{len(report.empty_identities)} identities have no image: {', '.join(report.empty_identities[:10])}")
    _print_skipped(report.skipped)
    return 0


def cmd_data_pairs(args: argparse.Namespace) -> int:
    from otface.data.tools.pairs import pairs_to_bin
    from otface.eval.verification import unbalanced_folds, unbalanced_message

    issame = pairs_to_bin(args.pairs, args.images, args.out, image_size=(args.size, args.size), ext=args.ext,
                          resize=args.resize, quality=args.quality, format=args.format)
    print(f"wrote {len(issame)} pairs ({sum(issame)} genuine) to {args.out}")
    folds = unbalanced_folds(issame) if len(issame) >= 10 else []
    if folds:
        logging.getLogger("otface.data").warning("%s: %s", args.pairs, unbalanced_message(folds))
    return 0


def cmd_data_unpack(args: argparse.Namespace) -> int:
    from otface.data.tools.unpack import unpack_bin, unpack_records

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

    align = commands.add_parser(
        "align", help="align photos by 5 landmarks to the 112x112 ArcFace template",
        description="Align the photos listed in a landmarks file to the ArcFace template. Landmark order (as "
                    "insightface and RetinaFace): the eye on the image's left (the person's right eye), the other "
                    "eye, the nose tip, the mouth corner on the image's left, the other mouth corner; x to the "
                    "right and y down, in pixels. A mirrored order or landmarks outside the photo are warned about.")
    align.add_argument("src", type=Path, help="folder of photos")
    align.add_argument("landmarks", type=Path,
                       help="text file, one line per photo: 'relative/path x1 y1 ... x5 y5' (an 11th number, a "
                            "detector score, is ignored; the path may hold spaces)")
    align.add_argument("dst", type=Path, help="output folder, not the photo folder (same layout, .jpg crops)")
    common(align)
    align.set_defaults(func=cmd_data_align)

    pack = commands.add_parser("pack", help="image folder root/<identity>/<image> -> insightface RecordIO")
    pack.add_argument("src", type=Path, help="image folder")
    pack.add_argument("dst", type=Path, help="output folder (train.rec, train.idx, property, classes.txt)")
    pack.add_argument("--resize", action="store_true", help="resize images of another size (default: error)")
    pack.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: this one)")
    common(pack)
    pack.set_defaults(func=cmd_data_pack)

    pairs = commands.add_parser(
        "pairs", help="LFW-style pairs.txt (or 'path1 path2 0|1' list) -> .bin",
        description="Write a verification .bin from a pair list, keeping its order. The 10 folds of the "
                    "verification protocol are contiguous runs of this order, so keep genuine and impostor pairs "
                    "mixed through the list (LFW's pairs.txt alternates blocks of 300 of each); a list with all "
                    "genuine pairs first gives folds of one kind, and is warned about.")
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
    train.add_argument("--config", help="YAML config file, or the name of a packaged recipe (`otface configs`)")
    train.add_argument("--out", help="run folder (default: runs/<time>-<head>[-ot])")
    train.add_argument("--resume", action="store_true", help="continue the run in --out (or the latest run)")
    train.add_argument("--list-keys", action="store_true", help="print every config key with its default and help")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (file, overrides; with --resume the checkpoint's) and exit")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    train.set_defaults(func=cmd_train)

    configs = sub.add_parser("configs", help="list the recipes shipped with otface (names for --config)")
    configs.set_defaults(func=cmd_configs)

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
    ev.add_argument("model", type=Path, help="training checkpoint (runs/<run>/last.pt), ONNX model (.onnx) or "
                                             "exported program (.pt2, with --trust-model)")
    ev.add_argument("--arch", help=ARCH_HELP)
    ev.add_argument("--trust-model", action="store_true",
                    help="load an exported .pt2 model: torch.export.load unpickles it, which runs any code the "
                         "file holds, so pass this only for a file you made or trust (checkpoints never need it)")
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
    ev.add_argument("--batch-size", type=_positive_int, default=256)
    ev.add_argument("--workers", type=int, default=0, help="processes decoding and aligning IJB images")
    ev.add_argument("--skip-bad", action="store_true", help="leave unreadable IJB/MegaFace images out, count them")
    ev.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="export a checkpoint's backbone as ONNX (.onnx, for onnxruntime, TensorRT, "
                                           "insightface) or a torch.export program (.pt2)")
    export.add_argument("checkpoint", type=Path, help="training checkpoint (runs/<run>/last.pt)")
    export.add_argument("out", type=Path, help="output file: .onnx, or .pt2")
    export.add_argument("--arch", help=ARCH_HELP)
    export.set_defaults(func=cmd_export)

    embed = sub.add_parser("embed", help="embeddings of aligned face images (flip-summed, L2-normalised) to .npy")
    embed.add_argument("model", type=Path, help="training checkpoint, .onnx, state dict (with --arch) or .pt2 "
                                                "(with --trust-model)")
    embed.add_argument("images", type=Path, help="a folder of aligned face images (searched recursively), or a text "
                                                 "file listing image paths relative to it, one per line")
    embed.add_argument("out", type=Path, help="embeddings file (.npy, float32 N x E); the image names go to "
                                              "<out>.names.txt beside it, one per row")
    embed.add_argument("--landmarks", type=Path, help="5-point landmarks of raw photos in IMAGES (the format of "
                                                      "`otface data align`): align them to 112x112 first")
    embed.add_argument("--arch", help=ARCH_HELP)
    embed.add_argument("--trust-model", action="store_true", help="load an exported .pt2 (see otface eval)")
    embed.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]'")
    embed.add_argument("--batch-size", type=_positive_int, default=256)
    embed.set_defaults(func=cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command: 0 on success; 2 with one line on stderr for a user's mistake or bad input
    (:class:`~otface.errors.OtfaceError`) or a path the machine refuses (permission, read-only or
    full disk: ENVIRONMENT_ERRORS); any other exception is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        retain_freed_memory()  # large tensors reused without page faults (otface.allocator)
        return args.func(args)
    except OtfaceError as err:
        print(f"{_process_prefix()}otface: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (`otface ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRORS or err.filename is None:
            raise
        print(f"otface: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otface: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
