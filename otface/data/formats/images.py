"""Face images as the formats store them: JPEG bytes of a given size (RecordIO records, .bin pairs)."""

from __future__ import annotations

import io

from PIL import Image

from otface.data.transforms import decode_image
from otface.errors import ConfigError, DataError


def check_encoding(image_size: tuple[int, int], quality: int) -> None:
    """Raise ``ConfigError`` unless ``image_size`` is a positive (height, width) and ``quality`` a
    JPEG quality in [1, 100] (checked once before a run, not per image)."""
    if len(image_size) != 2 or min(image_size) < 1:
        raise ConfigError(f"image_size must be a positive (height, width), got {image_size}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must lie in [1, 100], got {quality}")


def encode_face_image(data: bytes, image_size: tuple[int, int], quality: int = 95,
                      resize: bool = False) -> tuple[bytes, bool]:
    """The JPEG bytes to store for one encoded image, and whether they were re-encoded.

    ``image_size`` is (height, width). ``data`` itself is returned for a decodable RGB or grey
    JPEG of that size; otherwise the decoded RGB image (resized with bilinear filtering when
    ``resize`` is set) is encoded as JPEG at ``quality`` (1..100). Raises ``DataError`` when the
    bytes do not decode or the size differs and ``resize`` is not set (the message names no
    file: callers add it).
    """
    height, width = image_size
    image = decode_image(data)
    if image.shape[:2] != (height, width) and not resize:
        raise DataError(
            f"image is {image.shape[1]}x{image.shape[0]}, expected {width}x{height} (resize=True resizes it)"
        )
    with Image.open(io.BytesIO(data)) as img:
        stored_as_is = img.format == "JPEG" and img.mode in ("RGB", "L") and img.size == (width, height)
    if stored_as_is:
        return data, False
    pil = Image.fromarray(image)
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), True
