"""IJB-B / IJB-C face images and 1:1 verification meta data, in insightface's release layout.

insightface's ``recognition/_evaluation_/ijb/ijb_11.py`` evaluates a model on IJB-B and IJB-C from
a folder ``<root>`` (``.../IJB_release/IJBB`` or ``.../IJBC``) holding, with ``<n>`` the lower-case
set name (``ijbb`` or ``ijbc``):

- ``meta/<n>_face_tid_mid.txt``: one line per face image, ``image_name template_id media_id``;
- ``meta/<n>_name_5pts_score.txt``: the same images in the same order, ``image_name x1 y1 ... x5 y5
  score``: five landmarks (left eye, right eye, nose, left and right mouth corners) in pixels of
  the image and the face detector's confidence ("faceness" score);
- ``meta/<n>_template_pair_label.txt``: one line per template pair, ``template_1 template_2
  label`` with label 1 for a genuine pair, 0 for an impostor pair;
- ``loose_crop/<image_name>``: the loosely cropped face images (IJB-C: 469,375 images, 23,124
  templates, 15,658,489 pairs; IJB-B: 227,630 images, 12,115 templates, 8,010,270 pairs).

insightface pairs the two image lists by position; here their names must also agree. Each image
is aligned to 112x112 by its landmarks with :func:`otface.data.tools.align.align_face` (the
similarity to the ArcFace template and bilinear warp with a black border that insightface does with
skimage's ``SimilarityTransform`` and ``cv2.warpAffine``), decoded as RGB as insightface's
pipeline converts OpenCV's BGR to RGB. (insightface reads with ``cv2.imread``, which would also
apply an EXIF orientation tag; :func:`decode_image` does not. The crops are not known to carry one.)

Memory: IJB-C's aligned crops take 17.6 GB as uint8, so large sets are decoded lazily in chunks
(:func:`iter_ijb_chunks`, optionally in DataLoader worker processes) and embedded chunk by chunk
(``otface.eval.ijb.embed_ijb``).

A missing or undecodable image is an error naming it and its meta line, unless
``on_error="skip"``: then it is left out and listed, and evaluation reports the pairs of any
template left without images as skipped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from otface.data.skipping import check_on_error
from otface.data.text import numbered_lines
from otface.data.tools.align import align_face
from otface.data.transforms import read_image, to_chw
from otface.errors import ConfigError, DataError, InputNotFoundError, one_line
from otface.progress import progress_bar

ALIGNED_SIZE = 112
NAMES = ("IJBB", "IJBC")


def canonical_name(name: str) -> str:
    """``"IJBB"`` or ``"IJBC"`` for any spelling such as ``ijbc`` or ``IJB-C``."""
    canon = name.upper().replace("-", "").replace("_", "")
    if canon not in NAMES:
        raise ConfigError(f"IJB set name must be one of {NAMES}, got {name!r}")
    return canon


def ijb_paths(root: str | Path, name: str) -> dict[str, Path]:
    """The three meta files and the image folder of set ``name`` under ``root`` (see module doc)."""
    root, prefix = Path(root), canonical_name(name).lower()
    return {
        "face_tid_mid": root / "meta" / f"{prefix}_face_tid_mid.txt",
        "template_pair_label": root / "meta" / f"{prefix}_template_pair_label.txt",
        "name_5pts_score": root / "meta" / f"{prefix}_name_5pts_score.txt",
        "loose_crop": root / "loose_crop",
    }


def _records(path: Path, fields: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated tokens) of every non-blank line of ``path``, which must
    hold exactly the space-separated ``fields``."""
    names = fields.split()
    for lineno, line in numbered_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != len(names):
            raise DataError(f"{path}:{lineno}: expected {len(names)} fields ({fields}), got "
                            f"{len(tokens)}: {line.strip()[:200]!r}")
        yield lineno, tokens


def _number(kind: type, token: str, path: Path, lineno: int, what: str) -> int | float:
    try:
        return kind(token)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} must be {'an integer' if kind is int else 'a number'}, "
                        f"got {token!r}") from None


def _line_of_record(path: Path, fields: str, row: int) -> int:
    """Line number of the ``row``-th (0-based) record of ``path``."""
    return next(lineno for k, (lineno, _) in enumerate(_records(path, fields)) if k == row)


def read_face_tid_mid(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Read ``<n>_face_tid_mid.txt``.

    Returns:
        names: N image names; templates, medias: (N,) int64 template and media ids;
        lines: (N,) int64 line number of each image in the file (1-based).
    """
    path = Path(path)
    names, templates, medias, lines = [], [], [], []
    for lineno, (name, tid, mid) in _records(path, "image_name template_id media_id"):
        names.append(name)
        templates.append(_number(int, tid, path, lineno, "template_id"))
        medias.append(_number(int, mid, path, lineno, "media_id"))
        lines.append(lineno)
    if not names:
        raise DataError(f"{path}: no images listed")
    return names, np.array(templates, dtype=np.int64), np.array(medias, dtype=np.int64), np.array(lines, dtype=np.int64)


def read_name_5pts_score(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Read ``<n>_name_5pts_score.txt``.

    Returns:
        names: N image names; landmarks: (N, 5, 2) float32 (x, y) pixels; faceness: (N,) float32
        detector scores; lines: (N,) int64 line number of each image in the file (1-based).
    """
    path = Path(path)
    fields = "image_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score"
    names, values, lines = [], [], []
    for lineno, tokens in _records(path, fields):
        names.append(tokens[0])
        values.append([_number(float, t, path, lineno, what) for t, what in zip(tokens[1:], fields.split()[1:])])
        lines.append(lineno)
    if not names:
        raise DataError(f"{path}: no images listed")
    values = np.array(values, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(values).all(1))
    if len(bad):
        raise DataError(f"{path}:{lines[bad[0]]}: landmarks and score must be finite, got {values[bad[0]].tolist()}")
    landmarks = values[:, :10].reshape(-1, 5, 2)
    bad = np.flatnonzero((landmarks == landmarks[:, :1]).all((1, 2)))
    if len(bad):  # no similarity maps one point onto the five of the template
        raise DataError(f"{path}:{lines[bad[0]]}: the five landmarks coincide at {landmarks[bad[0], 0].tolist()}")
    return names, landmarks, values[:, 10], np.array(lines, dtype=np.int64)


def read_template_pair_label(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<n>_template_pair_label.txt`` (millions of lines: parsed by numpy's C reader).

    Returns:
        pairs: (P, 2) int64 template ids; labels: (P,) int64, 1 genuine, 0 impostor.
    """
    path = Path(path)
    fields = "template_1 template_2 label"
    error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "input contained no data"
            table = np.loadtxt(path, dtype=np.int64, comments=None, ndmin=2)
    except ValueError as exc:
        error = exc
    if error is not None:
        for lineno, tokens in _records(path, fields):  # name the malformed line
            for token, what in zip(tokens, fields.split()):
                _number(int, token, path, lineno, what)
        raise DataError(f"{path}: not a table of 64-bit integers ({one_line(str(error))})")
    if table.size == 0:
        raise DataError(f"{path}: no pairs listed")
    if table.shape[1] != 3:
        next(_records(path, fields))  # raises, naming the first line
    bad = np.flatnonzero((table[:, 2] != 0) & (table[:, 2] != 1))
    if len(bad):
        raise DataError(f"{path}:{_line_of_record(path, fields, int(bad[0]))}: label must be 0 or 1, "
                        f"got {table[bad[0], 2]}")
    genuine = int(table[:, 2].sum())
    if genuine in (0, len(table)):
        raise DataError(f"{path}: all {len(table)} pairs are {'impostor' if genuine == 0 else 'genuine'}: "
                        "verification needs both kinds")
    return table[:, :2].copy(), table[:, 2].copy()


@dataclass
class IJBMeta:
    """An IJB set's images (N, in meta order) and template pairs (P)."""

    name: str
    root: Path
    image_names: list[str]
    templates: np.ndarray  # (N,) int64
    medias: np.ndarray  # (N,) int64
    landmarks: np.ndarray  # (N, 5, 2) float32 pixels
    faceness: np.ndarray  # (N,) float32 detector scores
    image_lines: np.ndarray  # (N,) int64 line of each image in name_5pts_score
    pairs: np.ndarray  # (P, 2) int64 template ids
    labels: np.ndarray  # (P,) int64, 1 genuine

    @property
    def paths(self) -> dict[str, Path]:
        return ijb_paths(self.root, self.name)

    def __len__(self) -> int:
        return len(self.image_names)


def load_ijb_meta(root: str | Path, name: str) -> IJBMeta:
    """Read and cross-check the meta files of set ``name`` (``IJBB`` / ``IJBC``) under ``root``.

    Raises ``InputNotFoundError`` for a missing file and ``DataError`` (naming file and line) for
    a malformed line, image lists that differ in length or names, or a pair naming a template
    that has no image (insightface would silently score such a pair against template row 0).
    """
    name = canonical_name(name)
    paths = ijb_paths(root, name)
    for key in ("face_tid_mid", "template_pair_label", "name_5pts_score"):
        if not paths[key].is_file():
            raise InputNotFoundError(f"{name} meta file not found: {paths[key]}")
    names, templates, medias, tid_lines = read_face_tid_mid(paths["face_tid_mid"])
    names5, landmarks, faceness, lines5 = read_name_5pts_score(paths["name_5pts_score"])
    if len(names) != len(names5):
        raise DataError(f"{paths['face_tid_mid']} lists {len(names)} images but {paths['name_5pts_score']} "
                        f"lists {len(names5)}: they must list the same images in the same order")
    differ = next((k for k, (a, b) in enumerate(zip(names, names5)) if a != b), None)
    if differ is not None:
        raise DataError(f"{paths['face_tid_mid']}:{tid_lines[differ]} names image {names[differ]!r} but "
                        f"{paths['name_5pts_score']}:{lines5[differ]} names {names5[differ]!r}: the two "
                        "lists must list the same images in the same order")
    pairs, labels = read_template_pair_label(paths["template_pair_label"])
    unknown = np.flatnonzero(~np.isin(pairs, templates).all(1))
    if len(unknown):
        row = int(unknown[0])
        line = _line_of_record(paths["template_pair_label"], "template_1 template_2 label", row)
        missing = next(int(t) for t in pairs[row] if not np.isin(t, templates))
        raise DataError(f"{paths['template_pair_label']}:{line}: template {missing} is not in "
                        f"{paths['face_tid_mid']} ({len(unknown)} pairs name unknown templates)")
    return IJBMeta(name, Path(root), names, templates, medias, landmarks, faceness, lines5, pairs, labels)


class IJBFaces(Dataset):
    """Aligned faces of an IJB set, decoded on access: item i is (i, uint8 (3, 112, 112) tensor,
    None), or with ``skip_errors`` (i, None, message) for an image that cannot be read."""

    def __init__(self, meta: IJBMeta, skip_errors: bool = False) -> None:
        paths = meta.paths
        self.image_dir = paths["loose_crop"]
        self.list_file = paths["name_5pts_score"]
        self.names = meta.image_names
        self.landmarks = meta.landmarks
        self.lines = meta.image_lines
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> torch.Tensor:
        """uint8 (3, 112, 112) aligned RGB face of image ``index``; ``DataError`` naming the image
        and its meta line when it is missing or cannot be decoded."""
        path = self.image_dir / self.names[index]
        try:
            image = read_image(path)
        except DataError as exc:
            raise DataError(f"image {path} (listed at {self.list_file}:{self.lines[index]}): {exc}") from None
        return to_chw(align_face(image, self.landmarks[index], ALIGNED_SIZE))

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.load(index), None
        except DataError as exc:
            if not self.skip_errors:
                raise
            return index, None, str(exc)


@dataclass
class IJBChunk:
    """Consecutive images of an IJB set: those that loaded and those that failed (skip mode)."""

    indices: np.ndarray  # (K,) int64 rows of the meta lists
    images: torch.Tensor  # (K, 3, 112, 112) uint8 RGB
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, message)


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> IJBChunk:
    loaded = [(i, image) for i, image, _ in items if image is not None]
    images = (torch.stack([image for _, image in loaded]) if loaded
              else torch.empty((0, 3, ALIGNED_SIZE, ALIGNED_SIZE), dtype=torch.uint8))
    return IJBChunk(np.array([i for i, _ in loaded], dtype=np.int64), images,
                    [(i, message) for i, image, message in items if image is None])


def iter_ijb_chunks(
    meta: IJBMeta, chunk_size: int = 1024, num_workers: int = 0, on_error: str = "raise", progress: bool = True
) -> Iterator[IJBChunk]:
    """Decode and align the images of ``meta`` in order, ``chunk_size`` at a time.

    ``num_workers`` > 0 decodes in that many DataLoader processes (each holds about two chunks
    ahead, 37.6 KB per image). ``on_error="skip"`` lists unreadable images in each chunk's
    ``failures`` instead of raising. ``progress`` shows a tqdm bar over the images.
    """
    check_on_error(on_error)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    faces = IJBFaces(meta, skip_errors=on_error == "skip")
    loader = DataLoader(faces, batch_size=chunk_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    skipped = 0
    with progress_bar(total=len(faces), desc=f"{meta.name} faces", unit="img", enabled=progress) as bar:
        for chunk in loader:
            skipped += len(chunk.failures)
            bar.update(len(chunk.indices) + len(chunk.failures))
            if skipped:
                bar.set_postfix(skipped=skipped)
            yield chunk
