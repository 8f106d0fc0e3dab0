"""Image preprocessing: the one place where encoded images become network inputs.

Convention (insightface / arcface_torch): aligned crops, 112x112, channels in **RGB** order,
``(3, H, W)`` tensors, pixel values mapped from [0, 255] to [-1, 1] by ``(x - 127.5) / 127.5``.
Inference code must do exactly the same: decode to RGB (not OpenCV's BGR), CHW, normalise.
Data sets and loaders move uint8 images; :func:`network_input` makes the float inputs, a batch at
a time, where the model runs.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from otface.errors import DataError

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes JPEG too, about 2.5x slower on 112x112 crops
    simplejpeg = None

_JPEG_START = b"\xff\xd8\xff"
_FAST_COLORSPACES = ("YCbCr", "Gray")


def _jpeg_colorspace(data: bytes) -> str | None:
    try:
        return simplejpeg.decode_jpeg_header(data)[2]
    except ValueError:
        return None  # no readable header: Pillow names the error


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) into a uint8 (H, W, 3) RGB array.

    YCbCr and grey JPEG go through libjpeg-turbo via ``simplejpeg`` when it is installed (same
    pixels as Pillow: both use libjpeg-turbo's accurate DCT and smooth upsampling), in strict mode
    so that a truncated or damaged file is an error rather than a patched-up image; everything
    else (CMYK JPEG, whose RGB conversion differs, and other formats) goes to Pillow. Grey or RGBA
    images are converted to RGB. Raises :class:`~otface.errors.DataError` when the bytes are not a
    complete, decodable image. (Without ``simplejpeg``, Pillow accepts JPEG data damaged in the middle of the scan, as
    libjpeg only warns; it still rejects truncated files.)
    """
    if simplejpeg is not None and data[:3] == _JPEG_START and _jpeg_colorspace(data) in _FAST_COLORSPACES:
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as exc:
            raise DataError(f"cannot decode image (damaged JPEG data: {exc})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # what Pillow raises for bad bytes
        raise DataError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read and decode the image file at ``path`` into uint8 (H, W, 3) RGB (:func:`decode_image`).

    Raises :class:`~otface.errors.DataError` with the reason -- the file cannot be read, does not
    decode, or is not ``size`` (height, width) when given -- for the caller to prefix with the file
    and its listing.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read ({type(exc).__name__}: {exc.strerror or exc})") from None
    image = decode_image(data)
    if size is not None:
        check_size(image, size)
    return image


def check_size(image: np.ndarray, size: tuple[int, int]) -> None:
    """:class:`DataError` unless the (H, W, ...) ``image`` is ``size`` (height, width)."""
    if image.shape[:2] != tuple(size):
        raise DataError(f"image is {image.shape[1]}x{image.shape[0]}, expected {size[1]}x{size[0]}")


def to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) array -> uint8 (3, H, W) tensor (a contiguous copy): the item of a
    training set. Items stay uint8 -- a quarter of the bytes through the loader's worker queues
    -- and become network inputs a batch at a time on the device (:func:`network_input`); the
    random flips are drawn per batch (:func:`flip_draws`)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (..., 3, H, W) in [0, 255] -> float32 ``(x - 127.5) / 127.5`` in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"normalize expects (..., 3, H, W) images, got shape {tuple(images.shape)}")
    return (images.to(torch.float32) - 127.5) / 127.5


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images (3, H, W) or (N, 3, H, W) -> side ``size`` (bilinear, antialiased when
    shrinking); returned unchanged when already that size. Training and evaluation both use it,
    so a model trained at a reduced input size sees the same pixels at test time."""
    if images.shape[-2:] == (size, size):
        return images
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    out = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)
    return out if images.dim() == 4 else out.squeeze(0)


FLIP_STREAM = 0x5EED_F11B  # keeps the flip draws apart from the other uses of the run's seed


def flip_draws(seed: int, epoch: int, batch: int, n: int) -> torch.Tensor:
    """(n,) bool: which images of batch ``batch`` of ``epoch`` are flipped left-right (each with
    probability 1/2). A function of (seed, epoch, batch) alone -- not of loader workers or of
    where a run was interrupted -- so a resumed run sees the flips of an uninterrupted one."""
    return torch.from_numpy(np.random.default_rng([FLIP_STREAM, seed, epoch, batch]).random(n) < 0.5)


def flip_images(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """images (N, C, H, W), any dtype and device, with those where ``flips`` (N,) bool is True
    mirrored left-right."""
    if flips.shape != images.shape[:1]:
        raise ValueError(f"flips must be ({images.shape[0]},), got {tuple(flips.shape)}")
    return torch.where(flips.to(images.device)[:, None, None, None], images.flip(-1), images)


def network_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W), on any device -> float32 network inputs of side ``size``:
    normalised (:func:`normalize`), then resized (:func:`resize`). Training and evaluation both
    go through it."""
    return resize(normalize(images), size)
