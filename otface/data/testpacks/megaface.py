"""The MegaFace test pack as insightface distributes it (``megaface_testpack_v1.0``).

Expected layout under ``root`` (the names are the defaults of :func:`read_megaface`)::

    facescrub_lst           probe images, one per line, relative to facescrub_images/:
                            <identity>/<file>; the identity is the parent folder's name
    megaface_lst            distractor images, one per line, relative to megaface_images/
                            (e.g. <a>/<b>/<file>)
    facescrub_noises.txt    optional: probe images to drop (mislabelled FaceScrub images)
    megaface_noises.txt     optional: distractors to drop (e.g. images of FaceScrub identities)
    facescrub_images/       the probe images, aligned 112x112 crops
    megaface_images/        the distractor images, aligned 112x112 crops

Blank lines of the lists are ignored; a path must be relative and stay inside its folder, and
may not repeat. Noise lists (insightface's ``remove_noises.py`` reads them this way): lines that
start with ``#`` are comments; of a tab-separated line only the last field counts; an entry names
a listed image by a trailing part of its path (FaceScrub's entries are file names, MegaFace's
``<a>/<b>/<file>``), i.e. entry ``e/f`` matches every listed path ending in the components ``e/f``.
Matched images are dropped (insightface instead overwrites their features: a noisy probe by its
identity's mean feature, a noisy distractor by one far from everything). A noise list that is not
there removes nothing; :attr:`MegaFaceLists.noise_files` says which ones were read.

Images are decoded by :func:`otface.data.transforms.decode_image` into uint8 RGB and checked for
size; :func:`load_images` reads any slice of a list, so a million distractors can be embedded in
pieces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from otface.data.skipping import check_on_error, raise_or_skip
from otface.data.text import numbered_lines
from otface.data.transforms import read_image, to_chw
from otface.errors import DataError, InputNotFoundError

WHICH = ("probes", "distractors")


@dataclass(frozen=True)
class MegaFaceLists:
    """The probe and distractor lists of a test pack, after noise removal.

    ``probe_labels[i]`` indexes ``identities`` (sorted folder names); ``*_lines`` are the 1-based
    line numbers of the entries in their list files; ``removed_*`` the paths the noise lists
    dropped (their numbers are the counts of removed entries).
    """

    root: Path
    probe_list: Path
    probe_dir: Path
    probe_paths: list[str]
    probe_labels: np.ndarray
    probe_lines: np.ndarray
    identities: list[str]
    distractor_list: Path
    distractor_dir: Path
    distractor_paths: list[str]
    distractor_lines: np.ndarray
    removed_probes: list[str]
    removed_distractors: list[str]
    noise_files: list[Path]


@dataclass(frozen=True)
class LoadedImages:
    """Images of a slice of a list: ``images[m]`` is list entry ``indices[m]``.

    ``labels`` are the probe labels of those entries (None for distractors); ``skipped`` holds
    (list index, error message) of every entry dropped with ``on_error="skip"``.
    """

    images: torch.Tensor
    indices: np.ndarray
    labels: np.ndarray | None
    skipped: list[tuple[int, str]]


def _read_list(path: Path) -> tuple[list[str], list[int]]:
    """Non-blank lines of an image list (stripped) and their 1-based numbers, checked."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: image list not found")
    paths, lines, seen = [], [], {}
    for number, line in numbered_lines(path):
        entry = line.strip()
        if not entry:
            continue
        parts = entry.split("/")
        if ".." in parts or "" in parts:  # also catches "/abs", "a//b", "a/"
            raise DataError(f"{path} line {number}: {entry!r} is not a relative path inside the image folder")
        if entry in seen:
            raise DataError(f"{path} line {number}: {entry!r} repeats line {seen[entry]}")
        seen[entry] = number
        paths.append(entry)
        lines.append(number)
    return paths, lines


def _read_noises(path: Path) -> set[tuple[str, ...]]:
    """Noise entries as tuples of path components."""
    entries = set()
    for _, line in numbered_lines(path):
        if line.startswith("#"):
            continue
        entry = line.strip().split("\t")[-1].strip()
        if entry:
            entries.add(tuple(entry.split("/")))
    return entries


def _apply_noises(
    root: Path, name: str | None, paths: list[str], lines: list[int], noise_files: list[Path]
) -> tuple[list[str], list[int], list[str]]:
    """Drop the paths that noise list ``root / name`` names (when given and present; it is then
    appended to ``noise_files``): (kept paths, their line numbers, removed paths). A path goes
    when a noise entry equals its trailing components."""
    if name is None or not (root / name).is_file():
        return paths, lines, []
    noise_files.append(root / name)
    noises = _read_noises(root / name)
    lengths = {len(e) for e in noises}
    kept, kept_lines, removed = [], [], []
    for path, line in zip(paths, lines):
        parts = tuple(path.split("/"))
        if any(parts[-n:] in noises for n in lengths if n <= len(parts)):
            removed.append(path)
        else:
            kept.append(path)
            kept_lines.append(line)
    return kept, kept_lines, removed


def read_megaface(
    root: str | os.PathLike,
    probe_list: str = "facescrub_lst",
    distractor_list: str = "megaface_lst",
    probe_dir: str = "facescrub_images",
    distractor_dir: str = "megaface_images",
    probe_noises: str | None = "facescrub_noises.txt",
    distractor_noises: str | None = "megaface_noises.txt",
) -> MegaFaceLists:
    """Read the lists of a test pack at ``root`` (layout in the module docstring).

    File and folder names are relative to ``root``. A noise list set to None is not read even if
    present. Every probe path needs a parent folder (its identity). A missing ``root`` or image
    list raises ``InputNotFoundError``, a malformed list ``DataError`` naming its file and line.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: MegaFace test pack folder not found")
    probe_file, distractor_file = root / probe_list, root / distractor_list
    probes, probe_lines = _read_list(probe_file)
    for path, line in zip(probes, probe_lines):
        if "/" not in path:
            raise DataError(f"{probe_file} line {line}: {path!r} has no identity folder (<identity>/<file>)")
    distractors, distractor_lines = _read_list(distractor_file)

    noise_files: list[Path] = []
    probes, probe_lines, removed_probes = _apply_noises(root, probe_noises, probes, probe_lines, noise_files)
    distractors, distractor_lines, removed_distractors = _apply_noises(
        root, distractor_noises, distractors, distractor_lines, noise_files)

    names = [path.split("/")[-2] for path in probes]
    identities, labels = np.unique(np.array(names, dtype=object), return_inverse=True)
    return MegaFaceLists(
        root=root,
        probe_list=probe_file,
        probe_dir=root / probe_dir,
        probe_paths=probes,
        probe_labels=labels.astype(np.int64).reshape(-1),
        probe_lines=np.asarray(probe_lines, dtype=np.int64),
        identities=[str(name) for name in identities],
        distractor_list=distractor_file,
        distractor_dir=root / distractor_dir,
        distractor_paths=distractors,
        distractor_lines=np.asarray(distractor_lines, dtype=np.int64),
        removed_probes=removed_probes,
        removed_distractors=removed_distractors,
        noise_files=noise_files,
    )


def load_images(
    lists: MegaFaceLists,
    which: str,
    start: int = 0,
    stop: int | None = None,
    image_size: tuple[int, int] = (112, 112),
    on_error: str = "raise",
) -> LoadedImages:
    """Decode entries ``start:stop`` of the probe or distractor list into uint8 (M, 3, H, W) RGB.

    ``which`` is "probes" or "distractors"; ``image_size`` is (height, width). An entry whose
    file is missing, does not decode or has another size is a ``DataError`` naming the list file,
    its line and the image file; with ``on_error="skip"`` it is left out and recorded in
    ``skipped`` instead (``indices`` and ``labels`` keep each loaded image with its own entry). A
    missing image folder is an ``InputNotFoundError``. Normalise with ``transforms.normalize``.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    check_on_error(on_error)
    if which == "probes":
        list_file, folder, paths, lines = lists.probe_list, lists.probe_dir, lists.probe_paths, lists.probe_lines
    else:
        list_file, folder, paths, lines = (lists.distractor_list, lists.distractor_dir, lists.distractor_paths,
                                           lists.distractor_lines)
    positions = range(len(paths))[start:stop]
    if len(positions) and not folder.is_dir():
        raise InputNotFoundError(f"{folder}: image folder of {list_file} not found")
    height, width = image_size
    out = torch.empty((len(positions), 3, height, width), dtype=torch.uint8)
    indices, skipped = [], []
    for i in positions:
        image_path = folder / paths[i]
        try:
            image = read_image(image_path, (height, width))
        except DataError as exc:
            raise_or_skip(f"{list_file} line {lines[i]}: {image_path}: {exc}", on_error, skipped, i)
            continue
        out[len(indices)] = to_chw(image)
        indices.append(i)
    indices = np.asarray(indices, dtype=np.int64)
    return LoadedImages(
        images=out[: len(indices)],
        indices=indices,
        labels=lists.probe_labels[indices] if which == "probes" else None,
        skipped=skipped,
    )
