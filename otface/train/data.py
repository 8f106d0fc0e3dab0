"""Resolve the training set and validation sets of a run; generate synthetic faces if needed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch.utils.data import Dataset

from otface.config import DataSection, SynthSection
from otface.data.formats.folder import ImageFolderDataset
from otface.data.formats.record_dataset import RecordDataset
from otface.data.skipping import CatchBadSamples
from otface.errors import InputNotFoundError
from otface.synth import generate_synthetic

log = logging.getLogger("otface.train")


def synth_cache_dir(section: SynthSection) -> Path:
    """Folder of the cached synthetic set: ``cache_dir``, else $OTFACE_CACHE, else ~/.cache/otface."""
    base = section.cache_dir or os.environ.get("OTFACE_CACHE") or Path.home() / ".cache" / "otface"
    s = section
    name = f"synth-s{s.seed}-i{s.num_identities}x{s.images_per_identity}-p{s.num_pairs}"
    return Path(base) / name


def prepare_data(data: DataSection, progress: bool = True) -> tuple[Path, dict[str, Path]]:
    """Return (training folder, {validation set name: .bin path}).

    With ``data.root`` empty, the synthetic set is generated into the cache (or reused) and its
    easy and hard protocols are the validation sets unless ``data.val_sets`` names others.
    """
    if data.root:
        root = Path(data.root)
        if not root.is_dir():
            raise InputNotFoundError(f"data.root {root} is not a folder")
        val = {}
    else:
        out = synth_cache_dir(data.synthetic)
        paths = generate_synthetic(out, data.synthetic, progress=progress)
        root = Path(paths["root"])
        val = {"synth_easy": Path(paths["easy"]), "synth_hard": Path(paths["hard"])}
    if data.val_sets:
        val = {Path(p).stem: Path(p) for p in data.val_sets}
    if not val:
        log.warning("no verification sets (data.val_sets is empty): the run will report no accuracy")
    missing = [str(p) for p in val.values() if not p.is_file()]
    if missing:
        raise InputNotFoundError(f"validation set(s) not found: {', '.join(missing)}")
    return root, val


def open_training_set(root: Path, data: DataSection) -> Dataset:
    """The training set in ``root``: insightface RecordIO when ``root/train.rec`` exists, else an
    image folder ``root/<identity>/<image>``, wrapped in :class:`CatchBadSamples` so that an
    image that fails to decode reaches the trainer as a bad sample (raised there, or skipped).
    With ``data.on_error`` 'skip', records whose header cannot be read are dropped at once
    (listed in ``skipped``)."""
    if (root / "train.rec").is_file():
        dataset = RecordDataset(root, skip_unreadable=data.on_error == "skip")
    else:
        dataset = ImageFolderDataset(root)
    return CatchBadSamples(dataset)
