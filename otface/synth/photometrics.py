"""What the camera adds after drawing: low resolution, blur, directional light and sensor noise."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from otface.synth.identities import Nuisance

_NOISE_BANK_SIZE = 1 << 20
_noise_bank: np.ndarray | None = None


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise: a random window of a fixed bank (fast, and a function of rng)."""
    global _noise_bank
    if _noise_bank is None:
        _noise_bank = np.random.default_rng(0x5EED).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    count = math.prod(shape)
    start = int(rng.integers(0, _NOISE_BANK_SIZE - count))
    return _noise_bank[start : start + count].reshape(shape)


def _photometric(img: Image.Image, nuis: Nuisance, rng: np.random.Generator) -> Image.Image:
    """Low resolution, blur (box filter), directional illumination and sensor noise. (Colour
    cast and gamma are applied to the drawing colours.)"""
    size = img.size[0]
    if nuis.lowres > 1.0:
        small = max(8, round(size / nuis.lowres))
        img = img.resize((small, small), Image.BOX).resize((size, size), Image.BILINEAR)
    if nuis.blur > 0.05:
        img = img.filter(ImageFilter.BoxBlur(nuis.blur * size / 112.0))
    coords = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
    ramp = math.cos(nuis.light_angle) * coords[None, :] + math.sin(nuis.light_angle) * coords[:, None]
    shade = nuis.ambient + nuis.light_strength * np.clip(1.3 * ramp, -1.0, 1.0)
    a = np.asarray(img, dtype=np.float32) * shade[:, :, None]
    if nuis.noise > 0:
        a += _noise(rng, a.shape) * nuis.noise
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))
