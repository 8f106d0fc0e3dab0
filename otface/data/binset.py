"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ...).

A ``.bin`` file is a pickle of ``(images, issame)``: ``images`` a list of 2P encoded images
(bytes, or 1-d uint8 numpy arrays holding the encoded bytes), ``issame`` a list of P bools; images
2i and 2i+1 form pair i. insightface's published files were written by Python 2, so they are
read with ``encoding="bytes"``.

Unpickling is restricted: only plain containers, bytes, bools, numbers and numpy arrays/scalars
can be built, so a malicious ``.bin`` cannot run code; the loaded structure is then checked.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from otface.data.transforms import decode_image, to_chw

_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.bool_(True).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_IMAGE_DTYPES = (np.uint8, np.int8)


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only builtin values and numpy arrays/scalars; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a .bin file") from None


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a verification set: 2P encoded images and P is-same flags (pairs consecutive)."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs (need 2 per pair)")
    data = ([bytes(b) for b in images], [bool(s) for s in issame])
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Read a verification set: (2P encoded images as bytes, is-same flags as a bool array (P,))."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable verification .bin file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, got {type(data).__name__}")
    raw_images, raw_issame = data
    images = []
    for i, item in enumerate(raw_images):
        if isinstance(item, np.ndarray) and item.ndim == 1 and item.dtype in _IMAGE_DTYPES:
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise ValueError(f"{path}: image {i} is a {type(item).__name__}, not encoded image bytes")
        images.append(bytes(item))
    issame = np.asarray(raw_issame)
    if issame.ndim != 1 or not (issame.dtype == np.bool_ or np.isin(issame, (0, 1)).all()):
        raise ValueError(f"{path}: issame must be a flat list of booleans")
    issame = issame.astype(bool)
    if len(images) % 2 or len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs (need exactly 2 per pair)")
    return images, issame


def load_verification_set(
    path: str | os.PathLike, image_size: tuple[int, int] = (112, 112)
) -> tuple[torch.Tensor, np.ndarray]:
    """Read and decode a ``.bin`` set: (uint8 RGB images (2P, 3, H, W), is-same flags bool (P,)).

    ``image_size`` is (height, width); an image that does not decode or has another size is an
    error naming the file and the image index. Normalise with ``transforms.normalize``.
    """
    images, issame = read_bin(path)
    height, width = image_size
    out = torch.empty((len(images), 3, height, width), dtype=torch.uint8)
    for i, data in enumerate(images):
        try:
            image = decode_image(data)
        except ValueError as exc:
            raise ValueError(f"{path}: image {i} (pair {i // 2}): {exc}") from None
        if image.shape[:2] != (height, width):
            raise ValueError(
                f"{path}: image {i} (pair {i // 2}) is {image.shape[1]}x{image.shape[0]}, "
                f"expected {width}x{height}"
            )
        out[i] = to_chw(image)
    return out, issame
