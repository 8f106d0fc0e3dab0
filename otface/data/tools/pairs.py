"""Verification pair lists (LFW's ``pairs.txt`` and a plain path list) -> insightface ``.bin``.

Both formats are text with whitespace-separated fields; blank lines are ignored.

- ``"lfw"``, the format of LFW's ``pairs.txt``: an optional first line with the number of folds
  and the number of genuine pairs per fold, which is also the number of impostor pairs per fold
  (``10 300``), or with one number, the number of pairs of each kind (``1100`` in
  ``pairsDevTrain.txt``); when present it must announce the number of pairs in the file
  (2 x folds x pairs per fold, or 2 x the number). Then one pair per line: ``name n1 n2``, images
  ``n1`` and ``n2`` of ``name`` (genuine), or ``name1 n1 name2 n2`` (impostor). Image ``n`` of
  ``name`` is the file ``images_root/name/name_%04d.<ext>``.
- ``"list"``: one pair per line, ``path1 path2 label``: two image paths relative to
  ``images_root`` (without whitespace) and 1 when they show the same identity, 0 otherwise.

``format="auto"`` decides from the first non-blank line: one or two integers (an LFW header),
four fields, or three fields of which the last two are integers mean ``"lfw"``; any other
three-field line means ``"list"`` (a list whose second path looks like an integer needs
``format="list"``).

The ``.bin`` keeps the order of the lines: pair i is images 2i and 2i+1. Images are stored as in
``pack`` (:func:`otface.data.formats.images.encode_face_image`): a JPEG of the right size byte for byte,
anything else re-encoded as JPEG.
"""

from __future__ import annotations

import os
from pathlib import Path

from otface.data.formats.binset import write_bin
from otface.data.formats.images import check_encoding, encode_face_image
from otface.data.text import numbered_lines
from otface.errors import ConfigError, DataError, InputNotFoundError

PAIR_FORMATS = ("auto", "lfw", "list")
LfwImage = tuple[str, int]  # (identity name, image number)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line."""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: pair list not found")
    return [(lineno, line.split()) for lineno, line in numbered_lines(path) if line.strip()]


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _count(path: Path, lineno: int, text: str, what: str) -> int:
    if not _is_count(text):
        raise DataError(f"{path}:{lineno}: {what} {text!r} is not a non-negative integer")
    return int(text)


def _is_lfw_header(fields: list[str]) -> bool:
    return 1 <= len(fields) <= 2 and all(_is_count(f) for f in fields)


def detect_pairs_format(path: str | os.PathLike) -> str:
    """``"lfw"`` or ``"list"``, from the first non-blank line of a pair file (module docstring)."""
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise DataError(f"{path}: no pairs (the file is empty)")
    lineno, fields = lines[0]
    if _is_lfw_header(fields) or len(fields) == 4 or (len(fields) == 3 and all(map(_is_count, fields[1:]))):
        return "lfw"
    if len(fields) == 3:
        return "list"
    raise DataError(
        f"{path}:{lineno}: cannot tell the pair format from {' '.join(fields)!r} (expected 'name n1 n2', "
        f"'name1 n1 name2 n2', 'path1 path2 label' or an LFW header)"
    )


def _parse_lfw(path: Path) -> list[tuple[int, LfwImage, LfwImage, bool]]:
    """(line number, first image, second image, is same) of every pair of an LFW pair file."""
    lines = _lines(path)
    header = lines[0] if lines and _is_lfw_header(lines[0][1]) else None
    pairs = []
    for lineno, fields in lines[1:] if header else lines:
        if len(fields) == 3:
            name, first, second = fields
            pairs.append((lineno, (name, _count(path, lineno, first, "image number")),
                          (name, _count(path, lineno, second, "image number")), True))
        elif len(fields) == 4:
            name1, first, name2, second = fields
            pairs.append((lineno, (name1, _count(path, lineno, first, "image number")),
                          (name2, _count(path, lineno, second, "image number")), False))
        else:
            raise DataError(
                f"{path}:{lineno}: expected 'name n1 n2' (genuine) or 'name1 n1 name2 n2' (impostor), "
                f"got {len(fields)} fields: {' '.join(fields)!r}"
            )
    if not pairs:
        raise DataError(f"{path}: no pairs")
    if header:
        lineno, fields = header
        announced = 2 * int(fields[0]) * (int(fields[1]) if len(fields) == 2 else 1)
        if announced != len(pairs):
            raise DataError(
                f"{path}:{lineno}: the header {' '.join(fields)!r} announces {announced} pairs, "
                f"the file holds {len(pairs)}"
            )
    return pairs


def _parse_list(path: Path) -> list[tuple[int, str, str, bool]]:
    """(line number, first path, second path, is same) of every pair of a path list."""
    pairs = []
    for lineno, fields in _lines(path):
        if len(fields) != 3:
            raise DataError(
                f"{path}:{lineno}: expected 'path1 path2 label', got {len(fields)} fields: {' '.join(fields)!r}"
            )
        first, second, label = fields
        if label not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: label {label!r} must be 1 (same identity) or 0 (different)")
        pairs.append((lineno, first, second, label == "1"))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def read_pairs(path: str | os.PathLike) -> list[tuple[LfwImage, LfwImage, bool]]:
    """Parse an LFW pair file: ``((name1, n1), (name2, n2), issame)`` per pair, in file order."""
    return [(first, second, same) for _, first, second, same in _parse_lfw(Path(path))]


def read_pair_list(path: str | os.PathLike) -> list[tuple[str, str, bool]]:
    """Parse a path list: ``(path1, path2, issame)`` per pair, in file order."""
    return [(first, second, same) for _, first, second, same in _parse_list(Path(path))]


def lfw_image_path(images_root: str | os.PathLike, name: str, number: int, ext: str = "jpg") -> Path:
    """The file of image ``number`` of ``name`` in an LFW folder: ``root/name/name_%04d.ext``."""
    return Path(images_root) / name / f"{name}_{number:04d}.{ext.lstrip('.')}"


def _pair_files(pairs_txt: Path, root: Path, ext: str, format: str) -> list[tuple[int, Path, Path, bool]]:
    """(line number, first image file, second image file, is same) of every pair."""
    if format == "auto":
        format = detect_pairs_format(pairs_txt)
    if format == "lfw":
        return [(lineno, lfw_image_path(root, *first, ext=ext), lfw_image_path(root, *second, ext=ext), same)
                for lineno, first, second, same in _parse_lfw(pairs_txt)]
    return [(lineno, root / first, root / second, same) for lineno, first, second, same in _parse_list(pairs_txt)]


def pairs_to_bin(
    pairs_txt: str | os.PathLike,
    images_root: str | os.PathLike,
    out_bin: str | os.PathLike,
    image_size: tuple[int, int] = (112, 112),
    ext: str = "jpg",
    resize: bool = False,
    quality: int = 95,
    format: str = "auto",
) -> list[bool]:
    """Write the pairs of ``pairs_txt`` as the verification set ``out_bin``; return whether each
    pair is genuine, in order (the caller can check the balance of the contiguous folds).

    ``format`` is ``"lfw"``, ``"list"`` or ``"auto"`` (module docstring); ``ext`` is the LFW
    image extension. ``image_size`` is (height, width): an image of another size is an error
    unless ``resize`` is set, and re-encoded images use JPEG ``quality``. A malformed line, a
    missing image file or an image that does not decode or fit raises ``DataError`` naming
    ``pairs_txt`` and the line; a missing ``pairs_txt`` or ``images_root`` raises
    ``InputNotFoundError``. ``out_bin`` is written under a temporary name and renamed, so a failed
    run leaves no partial file (and an older ``out_bin`` intact).
    """
    pairs_txt, root, out = Path(pairs_txt), Path(images_root), Path(out_bin)
    if format not in PAIR_FORMATS:
        raise ConfigError(f"format must be one of {PAIR_FORMATS}, got {format!r}")
    check_encoding(image_size, quality)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: image folder not found")
    entries = _pair_files(pairs_txt, root, ext, format)
    stored: dict[Path, bytes] = {}
    images: list[bytes] = []
    for lineno, *paths, _ in entries:
        for path in paths:
            if path not in stored:
                if not path.is_file():
                    raise DataError(f"{pairs_txt}:{lineno}: image file {path} not found")
                try:
                    stored[path] = encode_face_image(path.read_bytes(), image_size, quality, resize)[0]
                except DataError as exc:
                    raise DataError(f"{pairs_txt}:{lineno}: {path}: {exc}") from None
            images.append(stored[path])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    issame = [same for *_, same in entries]
    try:
        write_bin(tmp, images, issame)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return issame
