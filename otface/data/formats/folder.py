"""Training sets stored as an image folder: ``root/<identity>/<image>``.

Layout: every sub-folder of ``root`` is one identity, every image file directly inside it one
face image (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``, any letter case). Identities are
the sub-folders sorted by name (plain string order, so ``"10"`` sorts before ``"2"``) and the
label of an identity is its position in that order; the images of an identity are sorted by file
name. Names starting with ``"."`` (hidden files and folders), other files, files directly in
``root`` and folders nested inside an identity folder are ignored.

An identity folder without images keeps its label (it has no images): the labels therefore stay
the folder positions whatever the folder holds, and a data set packed from the folder
(:func:`otface.data.tools.pack.pack_folder`), where unreadable images may be skipped, numbers its
identities the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from otface.data.transforms import check_size, read_image, to_chw
from otface.errors import DataError, InputNotFoundError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SIZE_PROBES = 16  # images tried for the folder's image size


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def scan_image_folder(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str]]:
    """List the images of an image-folder training set.

    Returns ``(paths, labels, class_names)``: the N image paths (identity by identity, each
    identity's images sorted by name), their int64 (N,) labels, and the C identity folder names
    (``class_names[label]``; an empty identity folder keeps its name and label). Raises
    ``InputNotFoundError`` when ``root`` is not a folder and ``DataError`` when it holds no
    identity folder or no image at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: image folder not found")
    class_dirs = sorted((p for p in root.iterdir() if _visible(p) and p.is_dir()), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"{root}: no identity folder (expected {root}/<identity>/<image>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            (p for p in class_dir.iterdir()
             if _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=lambda p: p.name,
        )
        paths.extend(images)
        labels.extend([label] * len(images))
    if not paths:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{root}: {len(class_dirs)} identity folders but no image in them (extensions {extensions})")
    return paths, np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs]


class ImageFolderDataset(Dataset):
    """Face images and identity labels of an image folder (see the module docstring).

    The interface of :class:`otface.data.formats.record_dataset.RecordDataset`: items are
    ``(image, label)``, a uint8 (3, H, W) RGB tensor and an int; ``labels`` is int64 (N,) and
    ``num_classes`` counts every identity folder.

    Every image must have one size, ``expected_size`` (height, width) or else that of the first
    image that reads, so that batches stack; an image of another size, or one that cannot be
    decoded, raises :class:`~otface.errors.DataError` naming its file.
    """

    def __init__(self, root: str | os.PathLike, expected_size: tuple[int, int] | None = None) -> None:
        self.root = Path(root)
        self.paths, self.labels, self.class_names = scan_image_folder(self.root)
        self.skipped: list[tuple[int, str]] = []  # RecordDataset's interface: nothing is dropped at construction
        self.num_classes = len(self.class_names)
        if expected_size is None:
            self.expected_size, first = self._first_size()
            self._size_origin = f" (the size of {first})"
        else:
            self.expected_size, self._size_origin = (int(expected_size[0]), int(expected_size[1])), ""

    def _first_size(self) -> tuple[tuple[int, int], Path]:
        """(height, width) of the first readable image among the first SIZE_PROBES, and its path."""
        errors = []
        for path in self.paths[:SIZE_PROBES]:
            try:
                return read_image(path).shape[:2], path
            except DataError as exc:
                errors.append(f"{path}: {exc}")
        raise DataError(f"{self.root}: none of its first {len(errors)} images can be read; first: {errors[0]}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            image = read_image(path)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        try:
            check_size(image, self.expected_size)
        except DataError as exc:
            raise DataError(f"{path}: {exc}{self._size_origin}") from None
        return to_chw(image), int(self.labels[index])
