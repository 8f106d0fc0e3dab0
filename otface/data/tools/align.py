"""5-point face alignment to the ArcFace template (similarity transform), without OpenCV.

insightface aligns a detected face by the least-squares similarity transform (rotation, uniform
scale, translation; no reflection) that maps its five landmarks -- left eye, right eye, nose tip,
left and right mouth corners, in image coordinates (x right, y down, pixel centres at integers) --
onto ``ARCFACE_TEMPLATE``, and warps the image with it (bilinear, black outside the image). That is
what every published ArcFace model expects at its input, so raw photos with landmarks go through
:func:`align_face` before training or evaluation.

- :func:`estimate_similarity` is Umeyama's closed form (IEEE TPAMI 13(4), 1991, Eq. 40-42).
- :func:`warp_affine` samples ``out[y, x] = image[M^-1 (x, y)]`` bilinearly, as OpenCV's
  ``warpAffine`` with a constant black border does (up to its 1/32-pixel fixed-point rounding).
- Output sizes that are multiples of 112 scale the template; other sizes (e.g. 128) scale it by
  size/128 and shift it right by 8 * size/128 pixels, as insightface's ``estimate_norm``.

:func:`align_folder` aligns a folder of photos listed in a landmarks file (one
``relative/path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`` line per face, the landmark order above) into a
folder of the same layout, ready for ``otface data pack``.

Landmark order, as in insightface and RetinaFace: the eye on the image's left comes first (the
person's right eye), then the other eye, the nose tip, the mouth corner on the image's left, the
other mouth corner. A file in the mirrored order gives crops of mirrored faces; it is detected
(the best fit onto the template would need a reflection) and warned about, as are landmarks
outside the photo.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from otface.data.skipping import check_on_error, raise_or_skip
from otface.data.text import numbered_lines
from otface.data.transforms import read_image
from otface.errors import ConfigError, DataError, RunError
from otface.progress import progress_bar

log = logging.getLogger("otface.data")

# (x, y) of the five landmarks in a 112x112 aligned crop (insightface's ``arcface_dst``).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def template(size: int = 112) -> np.ndarray:
    """(5, 2) landmark template, in pixels, for a ``size`` x ``size`` aligned crop."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112)
    ratio = size / 128
    return ARCFACE_TEMPLATE * ratio + np.array([8.0 * ratio, 0.0])


def _points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
        raise ValueError(f"{name} must be (K, 2) points with K >= 2, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or inf")
    return points


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform that maps ``src`` onto ``dst`` in least squares.

    Args:
        src, dst: (K, 2) corresponding points (x, y), K >= 2.
    Returns:
        (2, 3) float64 matrix M with ``dst ~ M @ [x, y, 1]``: M[:, :2] = c * R (R a rotation,
        det R = +1, c > 0), minimising sum_k |dst_k - M [src_k, 1]|^2.
    """
    src, dst = _points("src", src), _points("dst", dst)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have one shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("src points all coincide: no similarity transform is defined")
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))  # Eq. 38
    sign = np.eye(2)
    if _reflects(u, vt):  # Eq. 39: keep a rotation, not a reflection
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt  # Eq. 40
    scale = np.trace(np.diag(sigma) @ sign) / var_s  # Eq. 42
    translation = mu_d - scale * rotation @ mu_s  # Eq. 41
    return np.hstack([scale * rotation, translation[:, None]])


def _reflects(u: np.ndarray, vt: np.ndarray) -> bool:
    return np.linalg.det(u) * np.linalg.det(vt) < 0


def is_mirrored(landmarks: np.ndarray) -> bool:
    """Whether the five ``landmarks`` (5, 2) are listed in the mirrored order: the orthogonal map
    that fits them best onto the template is a reflection (Umeyama's Eq. 39 sign)."""
    src = _points("landmarks", landmarks)
    dst = ARCFACE_TEMPLATE
    u, _, vt = np.linalg.svd((dst - dst.mean(0)).T @ (src - src.mean(0)))
    return bool(_reflects(u, vt))


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` by the affine ``matrix`` (source -> output coordinates), bilinear.

    Args:
        image: uint8 (H, W, C) or (H, W).
        matrix: (2, 3) affine map of source pixel coordinates to output coordinates.
        size: (height, width) of the output.
    Returns:
        uint8 output of shape (height, width[, C]); pixels that map outside the image blend with
        black, as OpenCV's ``BORDER_CONSTANT`` with value 0.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W[, C]) image, got {image.dtype} {image.shape}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise ValueError(f"matrix must be a finite (2, 3) affine map, got {matrix.shape}")
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    if abs(np.linalg.det(full)) < 1e-12:
        raise ValueError("matrix is singular: the warp cannot be inverted")
    inverse = np.linalg.inv(full)[:2]
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    v = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fx, fy = u - x0, v - y0
    src = image if image.ndim == 3 else image[..., None]
    h, w = src.shape[:2]
    out = np.zeros((height, width, src.shape[2]), dtype=np.float64)
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out += np.where(inside, weight, 0.0)[..., None] * src[yi.clip(0, h - 1), xi.clip(0, w - 1)].astype(np.float64)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out if image.ndim == 3 else out[..., 0]


def alignment_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(2, 3) similarity that maps the five ``landmarks`` (5, 2) onto ``template(size)``."""
    landmarks = _points("landmarks", landmarks)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2) (eyes, nose, mouth corners), got {landmarks.shape}")
    return estimate_similarity(landmarks, template(size))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Aligned ``size`` x ``size`` crop of ``image`` (uint8 (H, W, 3)) given its five landmarks
    (5, 2) in pixels (x, y): left eye, right eye, nose, left mouth corner, right mouth corner."""
    return warp_affine(image, alignment_matrix(landmarks, size), (size, size))


@dataclass(frozen=True)
class LandmarkLine:
    """One line of a landmarks file: the photo's path as listed, its (5, 2) landmarks (x, y in
    pixels, the order of the module docstring) and the line number."""

    name: str
    points: np.ndarray
    lineno: int


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)", re.IGNORECASE)


def read_landmarks(path: str | os.PathLike) -> list[LandmarkLine]:
    """Parse a landmarks file: a :class:`LandmarkLine` per non-blank line, in file order.

    A line is the photo's path, then 10 numbers x1 y1 ... x5 y5, optionally an 11th (a detector
    score, as in IJB's ``*_name_5pts_score.txt``, ignored). The path may hold spaces: it is what
    precedes the numbers. Whether the file has the score column is decided by its first line
    (a path whose last space-separated part is a number is then ambiguous there: such a file is
    refused at its second line) and holds for every line. Errors name the file and line.
    """
    entries: list[LandmarkLine] = []
    columns = None
    for lineno, line in numbered_lines(path):
        tokens = list(re.finditer(r"\S+", line))
        if not tokens:
            continue
        numeric = 0
        while numeric < len(tokens) - 1 and _NUMBER.fullmatch(tokens[-1 - numeric].group()):
            numeric += 1
        wanted = columns or min(numeric, 11)
        if numeric < wanted or wanted < 10:
            if numeric < len(tokens) - 1 and len(tokens) >= 11:
                bad = tokens[len(tokens) - 1 - numeric].group()
                raise DataError(f"{path}:{lineno}: landmark coordinates must be numbers, got {bad!r}")
            expected = f"{wanted} numbers" if columns else "10 numbers (and an optional score)"
            raise DataError(f"{path}:{lineno}: expected 'path x1 y1 ... x5 y5', the path then {expected}; "
                            f"got {len(tokens)} fields")
        columns = wanted
        first = tokens[len(tokens) - wanted]
        name = line[: first.start()].strip()
        points = np.array([float(t.group()) for t in tokens[len(tokens) - wanted:][:10]]).reshape(5, 2)
        if not np.isfinite(points).all():
            raise DataError(f"{path}:{lineno}: landmark coordinates must be finite")
        if np.ptp(points, axis=0).max() == 0:
            raise DataError(f"{path}:{lineno}: the five landmarks of {name!r} coincide")
        entries.append(LandmarkLine(name, points, lineno))
    if not entries:
        raise DataError(f"{path}: no landmarks listed")
    return entries


def landmark_warnings(points: np.ndarray, height: int, width: int) -> list[str]:
    """What looks wrong with a photo's landmarks (5, 2): points outside the height x width
    photo, or the mirrored order (:func:`is_mirrored`)."""
    warnings = []
    outside = (points[:, 0] < 0) | (points[:, 0] > width - 1) | (points[:, 1] < 0) | (points[:, 1] > height - 1)
    if outside.any():
        warnings.append(f"{int(outside.sum())} landmarks lie outside the {width}x{height} photo")
    if is_mirrored(points):
        warnings.append("the landmarks are in the mirrored order (the eye on the image's left comes first), "
                        "so the crop shows a mirrored face")
    return warnings


def _output_paths(src: Path, dst: Path, landmarks: str | os.PathLike,
                  entries: list[LandmarkLine]) -> list[Path]:
    """The crop path in ``dst`` of each entry, refusing a listed path that leaves ``src``, two
    entries with one output, and an output outside ``dst`` or over a listed photo."""
    if src.resolve() == dst.resolve():
        raise ConfigError(f"the output folder {dst} is the photo folder: choose another, the crops would "
                          "replace the photos")
    outputs: dict[Path, LandmarkLine] = {}
    inputs = set()
    root = dst.resolve()
    for entry in entries:
        rel = PurePath(os.path.normpath(entry.name))
        if rel.is_absolute() or rel.parts[:1] == ("..",) or entry.name in ("", "."):
            raise DataError(f"{landmarks}:{entry.lineno}: path {entry.name!r} leaves the photo folder {src}: "
                            "list paths relative to it")
        out = (dst / rel).with_suffix(".jpg")
        if out in outputs:
            other = outputs[out]
            raise DataError(f"{landmarks}:{entry.lineno}: {entry.name!r} and line {other.lineno} "
                            f"({other.name!r}) would both be written to {out}")
        resolved = out.resolve()
        if not resolved.is_relative_to(root):
            raise DataError(f"{landmarks}:{entry.lineno}: the crop of {entry.name!r} would be written outside "
                            f"{dst} (to {resolved}, through a link)")
        outputs[out] = entry
        inputs.add((src / rel).resolve())
    for out, entry in outputs.items():
        if out.resolve() in inputs:
            raise DataError(f"{landmarks}:{entry.lineno}: the crop of {entry.name!r} would overwrite a listed "
                            f"photo, {out}")
    return list(outputs)


def align_folder(src: str | os.PathLike, landmarks: str | os.PathLike, dst: str | os.PathLike, size: int = 112,
                 quality: int = 95, on_error: str = "raise",
                 progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """Align every photo listed in ``landmarks`` (paths relative to ``src``) into ``dst``.

    Each aligned ``size`` x ``size`` crop is written as JPEG at ``quality`` under the same relative
    path in ``dst`` (extension ``.jpg``), so ``src/<identity>/<photo>`` becomes an image-folder
    training set. Nothing is written outside ``dst``: a listed path that leaves ``src``, two photos
    with one crop name (``x.jpg``, ``x.png``) or a crop that would replace a listed photo is a
    :class:`DataError` naming the line, raised before anything is written. A photo that is missing
    or cannot be decoded raises ``DataError`` naming it and the landmarks line; with
    ``on_error="skip"`` it is left out and listed. Suspicious landmarks are logged as warnings
    (:func:`landmark_warnings`). Returns (number of crops written, [(relative path, reason)]
    skipped).
    """
    check_on_error(on_error)
    src, dst = Path(src), Path(dst)
    entries = read_landmarks(landmarks)
    outputs = _output_paths(src, dst, landmarks, entries)
    written, skipped = 0, []
    for entry, out in progress_bar(list(zip(entries, outputs)), desc="align", unit="img", enabled=progress):
        where = f"{src / entry.name} (listed in {landmarks}:{entry.lineno})"
        try:
            image = read_image(src / entry.name)
        except DataError as exc:
            raise_or_skip(f"{where}: {exc}", on_error, skipped, entry.name)
            continue
        for warning in landmark_warnings(entry.points, *image.shape[:2]):
            log.warning("%s: %s", where, warning)
        buf = io.BytesIO()
        Image.fromarray(align_face(image, entry.points, size)).save(buf, "JPEG", quality=quality)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(buf.getvalue())
        except OSError as err:
            raise RunError(f"cannot write {out}: {err.strerror or err}") from None
        written += 1
    return written, skipped
