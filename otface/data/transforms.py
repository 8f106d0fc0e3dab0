"""Image preprocessing: the one place where encoded images become network inputs.

Convention (insightface / arcface_torch): aligned crops, 112x112, channels in **RGB** order,
``(3, H, W)`` tensors, pixel values mapped from [0, 255] to [-1, 1] by ``(x - 127.5) / 127.5``.
Inference code must do exactly the same: decode to RGB (not OpenCV's BGR), CHW, normalise.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) into a uint8 (H, W, 3) RGB array.

    Grey or RGBA images are converted to RGB. Raises ``ValueError`` when the bytes are not a
    complete, decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except Exception as exc:
        raise ValueError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) array -> uint8 (3, H, W) tensor (a contiguous copy)."""
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
