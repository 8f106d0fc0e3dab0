"""Pack an image folder (``root/<identity>/<image>``) into an insightface RecordIO folder.

``dst`` receives ``train.rec``, ``train.idx`` and ``property`` (the layout described in
``recordio``, read by :class:`otface.data.formats.record_dataset.RecordDataset`) and
``classes.txt``, one ``label<TAB>identity folder name`` line per identity, so that a label can be
traced back to its folder. Identities and labels are those of
:func:`otface.data.formats.folder.scan_image_folder`: an empty identity folder, or one whose
images were all skipped, keeps its label with no images.

Stored images are JPEG: a JPEG file (RGB or grey) that already has the target size is stored
byte for byte; any other image is decoded (``transforms.decode_image``: RGB, alpha dropped),
resized to the target size when ``resize`` is set (stretched, no crop: the images are meant to be
aligned face crops already) and encoded as JPEG.

Writing is atomic: the files are written under temporary names in ``dst`` and renamed into place
at the end, ``property`` (which readers open first) last and after removing any older one, so an
interrupted or failed pack never leaves a ``train.rec``/``train.idx``/``property`` set that looks
complete, and a previous pack in ``dst`` survives a failed one.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from otface.data.formats.folder import scan_image_folder
from otface.data.formats.images import check_encoding, encode_face_image
from otface.data.formats.recordio import write_face_dataset
from otface.data.skipping import check_on_error, raise_or_skip
from otface.data.staging import staged_files
from otface.data.text import numbered_lines
from otface.errors import ConfigError, DataError, RunError
from otface.progress import progress_bar

CLASSES_FILE = "classes.txt"
_DATASET_FILES = ("train.rec", "train.idx", CLASSES_FILE, "property")  # renamed in this order, property last


@dataclass
class PackReport:
    """What :func:`pack_folder` wrote.

    ``skipped`` lists ``(path, message naming the file)`` for the images left out (``on_error="skip"``);
    ``num_reencoded`` counts the stored images that are not the source file's bytes;
    ``empty_identities`` names the identities that ended up without images (their labels exist).
    """

    root: Path
    num_images: int
    num_identities: int
    num_reencoded: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    empty_identities: list[str] = field(default_factory=list)


def _prepare_file(path: Path, image_size: tuple[int, int], quality: int,
                  resize: bool) -> tuple[bytes, bool] | str:
    """:func:`encode_face_image` of the file at ``path``, or the reason it failed (a picklable
    result, so that worker processes report failures back in order)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc})"
    try:
        return encode_face_image(data, image_size, quality, resize)
    except DataError as exc:
        return str(exc)


def write_classes(path: str | os.PathLike, class_names: list[str]) -> None:
    """Write ``classes.txt``: one ``label<TAB>name`` line per identity, labels 0..C-1 in order."""
    for label, name in enumerate(class_names):
        if any(c in name for c in "\t\r\n"):
            raise DataError(f"{path}: identity {label} name {name!r} holds a tab or a line break")
    text = "".join(f"{label}\t{name}\n" for label, name in enumerate(class_names))
    Path(path).write_text(text, encoding="utf-8", newline="\n")


def read_classes(path: str | os.PathLike) -> list[str]:
    """Read ``classes.txt`` back: the identity name of each label (``names[label]``)."""
    names: list[str] = []
    for lineno, line in numbered_lines(path, newline="\n"):
        label, sep, name = line.rstrip("\n").partition("\t")
        if not sep or label != str(len(names)):
            raise DataError(f"{path}:{lineno}: expected '{len(names)}<TAB>name', got {line.rstrip()!r}")
        names.append(name)
    return names


def pack_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    image_size: tuple[int, int] = (112, 112),
    quality: int = 95,
    resize: bool = False,
    on_error: str = "raise",
    workers: int = 0,
    progress: bool = True,
) -> PackReport:
    """Pack the image folder ``src`` into the insightface RecordIO folder ``dst`` (created if
    missing); see the module docstring for the files, the encoding and the atomic write.

    ``image_size`` is (height, width). An image that cannot be read or decoded, or has another
    size while ``resize`` is not set, raises ``DataError`` naming its file when ``on_error`` is
    ``"raise"``; with ``"skip"`` it is left out and listed in the report, every other image
    keeping its label. ``workers`` > 0 decodes, checks and re-encodes in that many processes (the
    output bytes do not depend on it); 0 works in this process. ``progress`` shows a tqdm bar.
    """
    check_on_error(on_error)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    check_encoding(image_size, quality)
    height, width = image_size
    src, dst = Path(src), Path(dst)
    paths, labels, class_names = scan_image_folder(src)
    if dst.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"{dst}: the output folder lies inside the image folder {src}")
    dst.mkdir(parents=True, exist_ok=True)
    prepare = functools.partial(_prepare_file, image_size=(height, width), quality=quality, resize=resize)
    skipped: list[tuple[Path, str]] = []
    counts = np.zeros(len(class_names), dtype=np.int64)
    num_reencoded = 0
    bar = progress_bar(total=len(paths), desc="pack", unit="img", enabled=progress)

    def samples(results: Iterator[tuple[bytes, bool] | str]) -> Iterator[tuple[bytes, int]]:
        nonlocal num_reencoded
        for path, label, result in zip(paths, labels.tolist(), results):
            bar.update(1)
            if isinstance(result, str):
                raise_or_skip(f"{path}: {result}", on_error, skipped, path)
                continue
            image, reencoded = result
            num_reencoded += reencoded
            counts[label] += 1
            yield image, label

    pool = multiprocessing.Pool(workers) if workers > 0 else None
    try:
        with staged_files(dst, _DATASET_FILES) as tmp:
            write_classes(tmp[CLASSES_FILE], class_names)
            if pool is not None:
                results = pool.imap(prepare, paths, chunksize=max(1, min(64, len(paths) // (8 * workers))))
            else:
                results = map(prepare, paths)
            n = write_face_dataset(dst, samples(results), len(class_names), (height, width),
                                   rec_name=tmp["train.rec"].name, idx_name=tmp["train.idx"].name,
                                   property_name=tmp["property"].name)
            if n == 0:
                raise RunError(f"{src}: none of the {len(paths)} images could be packed "
                               f"(first: {skipped[0][1]})")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return PackReport(
        root=dst,
        num_images=n,
        num_identities=len(class_names),
        num_reencoded=num_reencoded,
        skipped=skipped,
        empty_identities=[name for name, count in zip(class_names, counts) if count == 0],
    )
