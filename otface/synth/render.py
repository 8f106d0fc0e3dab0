"""One stored sample: the face painted under a nuisance, downsampled, photometrics, JPEG."""

from __future__ import annotations

import io

from PIL import Image

from otface.synth.geometry import _Face
from otface.synth.identities import Identity, Nuisance
from otface.synth.painter import SUPERSAMPLE, _Painter
from otface.synth.photometrics import _photometric


def render_face(identity: Identity, nuisance: Nuisance, size: int = 112) -> Image.Image:
    """Render ``identity`` under ``nuisance`` as a ``size`` x ``size`` RGB image (before JPEG)."""
    return _render(_Face(identity), nuisance, size)


def _render(face: _Face, nuisance: Nuisance, size: int) -> Image.Image:
    painter = _Painter(face, nuisance, size)
    img = painter.render().reduce(SUPERSAMPLE)
    return _photometric(img, nuisance, painter.rng)


def _jpeg(face: _Face, nuisance: Nuisance, size: int) -> bytes:
    buf = io.BytesIO()
    _render(face, nuisance, size).save(buf, "JPEG", quality=nuisance.jpeg_quality)
    return buf.getvalue()
