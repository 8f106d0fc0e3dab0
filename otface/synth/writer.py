"""The data set: the training set and the two verification protocols, written, cached, previewed.

``generate_synthetic`` writes ``train.rec``/``train.idx``/``property`` in insightface layout with
``num_identities`` x ``images_per_identity`` images at the "train" level, and two verification
sets on identities disjoint from the training ones (their own seed streams): ``synth_easy.bin``
(like LFW) and ``synth_hard.bin`` (like CPLFW). Pairs alternate genuine / impostor, so every one
of 10 contiguous folds is balanced. Every image is a pure function of (seed, split, identity or
pair, image index): the output is byte-identical for any number of worker processes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from otface.config import SynthSection
from otface.data.formats.binset import write_bin
from otface.data.formats.recordio import write_face_dataset
from otface.data.staging import staged_files
from otface.progress import progress_bar
from otface.synth.geometry import _Face
from otface.synth.identities import LEVELS, Identity, Nuisance, sample_identity, sample_nuisance
from otface.synth.render import _jpeg

FORMAT_VERSION = 2
IMAGE_SIZE = 112  # side of every generated image, in pixels

# Seed streams: every random draw comes from np.random.default_rng([seed, stream, split, ...]).
_STREAM_IDENTITY, _STREAM_IMAGE = 0, 1
_SPLITS = {"train": 0, "easy": 1, "hard": 2}


def train_identity(seed: int, index: int) -> Identity:
    """Training identity ``index`` (its label)."""
    return sample_identity(np.random.default_rng([seed, _STREAM_IDENTITY, _SPLITS["train"], index]))


def train_nuisance(seed: int, index: int, j: int) -> Nuisance:
    """Nuisance of image ``j`` of training identity ``index``."""
    return sample_nuisance(np.random.default_rng([seed, _STREAM_IMAGE, _SPLITS["train"], index, j]), "train")


def protocol_pair(seed: int, level: str, k: int) -> tuple[Identity, Identity, Nuisance, Nuisance, bool]:
    """Pair ``k`` of the "easy" or "hard" protocol: (identity a, identity b, nuisance a,
    nuisance b, is-same). Even pairs are genuine, odd pairs impostors; identities come from the
    protocol's own seed stream, never from the training one. In "hard" the two faces of every
    pair turn to opposite sides."""
    split = _SPLITS[level]
    same = k % 2 == 0
    a = sample_identity(np.random.default_rng([seed, _STREAM_IDENTITY, split, 2 * k]))
    b = a if same else sample_identity(np.random.default_rng([seed, _STREAM_IDENTITY, split, 2 * k + 1]))
    na = sample_nuisance(np.random.default_rng([seed, _STREAM_IMAGE, split, k, 0]), level)
    nb = sample_nuisance(np.random.default_rng([seed, _STREAM_IMAGE, split, k, 1]), level)
    if level == "hard" and na.yaw * nb.yaw > 0:
        nb = replace(nb, yaw=-nb.yaw)
    return a, b, na, nb, same


def _train_task(args: tuple[int, int, int, int]) -> list[bytes]:
    """The JPEG images of one training identity."""
    seed, index, count, size = args
    face = _Face(train_identity(seed, index))
    return [_jpeg(face, train_nuisance(seed, index, j), size) for j in range(count)]


def _pair_task(args: tuple[int, str, int, int]) -> list[bytes]:
    """The two JPEG images of one protocol pair."""
    seed, level, k, size = args
    a, b, na, nb, same = protocol_pair(seed, level, k)
    face_a = _Face(a)
    return [_jpeg(face_a, na, size), _jpeg(face_a if same else _Face(b), nb, size)]


def _results(pool, workers: int, func, tasks: list, bar: tqdm) -> Iterator[list[bytes]]:
    """``func`` over ``tasks`` in order, on ``pool`` (None: in this process), advancing ``bar``."""
    if pool is None:
        results = map(func, tasks)
    else:
        results = pool.imap(func, tasks, chunksize=max(1, min(16, len(tasks) // (8 * workers))))
    for images in results:
        bar.update(len(images))
        yield images


_FILES = {"train_rec": "train.rec", "train_idx": "train.idx", "property": "property",
          "easy": "synth_easy.bin", "hard": "synth_hard.bin"}


def _content(cfg: SynthSection) -> dict:
    """The settings that determine the output, as ``meta.json`` records them: all but
    ``workers`` and ``cache_dir``, and the image size."""
    return {"seed": cfg.seed, "num_identities": cfg.num_identities, "images_per_identity": cfg.images_per_identity,
            "num_pairs": cfg.num_pairs, "image_size": IMAGE_SIZE}


def _cached(out: Path, cfg: SynthSection) -> bool:
    """Whether ``out`` holds a complete set for ``cfg`` (meta.json matches, sizes as recorded)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):  # no meta.json, or not JSON: not cached
        return False
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        return False
    sizes = meta.get("sizes")
    return meta.get("config") == _content(cfg) and isinstance(sizes, dict) and all(
        (out / name).is_file() and (out / name).stat().st_size == sizes.get(name) for name in _FILES.values())


def generate_synthetic(out_dir: str | os.PathLike, cfg: SynthSection, progress: bool = True) -> dict[str, Path]:
    """Write the synthetic data set into ``out_dir``, or reuse it when its ``meta.json`` matches.

    Writes ``train.rec``/``train.idx``/``property`` (insightface layout), ``synth_easy.bin``,
    ``synth_hard.bin`` and ``meta.json`` (format version, config, file sizes). Returns the paths
    by name: ``root`` (the folder), ``train_rec``, ``train_idx``, ``property``, ``easy``,
    ``hard``, ``meta``. Files are written under temporary names and renamed into place, and
    ``meta.json`` is removed first and written last, so an interrupted run never leaves a set
    that looks complete. The bytes do not depend on ``cfg.workers``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"root": out, **{k: out / v for k, v in _FILES.items()}, "meta": out / "meta.json"}
    if _cached(out, cfg):
        return paths
    paths["meta"].unlink(missing_ok=True)
    start = time.perf_counter()
    total = cfg.num_identities * cfg.images_per_identity + 4 * cfg.num_pairs
    pool = multiprocessing.Pool(cfg.workers) if cfg.workers > 1 else None
    bar = progress_bar(total=total, desc="synthetic faces", unit="img", enabled=progress)
    try:
        with staged_files(out, list(_FILES.values())) as tmp:
            tasks = [(cfg.seed, i, cfg.images_per_identity, IMAGE_SIZE) for i in range(cfg.num_identities)]
            per_identity = _results(pool, cfg.workers, _train_task, tasks, bar)
            samples = ((image, label) for label, images in enumerate(per_identity) for image in images)
            write_face_dataset(out, samples, cfg.num_identities, (IMAGE_SIZE, IMAGE_SIZE),
                               rec_name=tmp["train.rec"].name, idx_name=tmp["train.idx"].name,
                               property_name=tmp["property"].name)
            for level in ("easy", "hard"):
                tasks = [(cfg.seed, level, k, IMAGE_SIZE) for k in range(cfg.num_pairs)]
                images = [image for pair in _results(pool, cfg.workers, _pair_task, tasks, bar) for image in pair]
                write_bin(tmp[_FILES[level]], images, [k % 2 == 0 for k in range(cfg.num_pairs)])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    meta = {
        "format_version": FORMAT_VERSION,
        "config": _content(cfg),
        "sizes": {name: (out / name).stat().st_size for name in _FILES.values()},
        "num_train_images": cfg.num_identities * cfg.images_per_identity,
        "seconds": round(time.perf_counter() - start, 1),
    }
    meta_tmp = out / f".meta.json.tmp{os.getpid()}"
    meta_tmp.write_text(json.dumps(meta, indent=2))
    os.replace(meta_tmp, paths["meta"])
    return paths


def write_preview(out_png: str | os.PathLike, cfg: SynthSection, n_ids: int = 8, per_id: int = 6,
                  level: str = "train") -> None:
    """Save a PNG grid of samples as stored (JPEG-decoded): one row per identity.

    "train": the first training identities with their first training images. "easy" / "hard":
    identities of that protocol's genuine pairs under that level's nuisance (for "hard",
    alternate columns turned to opposite sides, as in its pairs). The PNG uses a 256-colour
    palette to stay small."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    size = IMAGE_SIZE
    grid = Image.new("RGB", (per_id * (size + 2) - 2, n_ids * (size + 2) - 2), (255, 255, 255))
    for row in range(n_ids):
        if level == "train":
            face = _Face(train_identity(cfg.seed, row))
            nuisances = [train_nuisance(cfg.seed, row, col) for col in range(per_id)]
        else:
            a, _, na, nb, _ = protocol_pair(cfg.seed, level, 2 * row)
            face = _Face(a)
            split = _SPLITS[level]
            nuisances = [na, nb] + [
                sample_nuisance(np.random.default_rng([cfg.seed, _STREAM_IMAGE, split, 2 * row, col]), level)
                for col in range(2, per_id)
            ]
            if level == "hard":
                nuisances = [replace(n, yaw=abs(n.yaw) * (1 if col % 2 else -1))
                             for col, n in enumerate(nuisances)]
        for col, nuis in enumerate(nuisances):
            image = Image.open(io.BytesIO(_jpeg(face, nuis, size))).convert("RGB")
            grid.paste(image, (col * (size + 2), row * (size + 2)))
    grid.quantize(256, method=Image.Quantize.MEDIANCUT).save(out_png, optimize=True)
