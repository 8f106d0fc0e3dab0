"""Backbones: IResNet-18/34/50/100/200 and MobileFaceNet, with their stage feature maps by name.

>>> model = build_backbone("iresnet50")              # (N, 3, 112, 112) -> (N, 512)
>>> emb, maps = model.forward_features(x, ["layer2"])  # maps["layer2"]: (N, 128, 28, 28)
"""

from __future__ import annotations

from typing import Any

from otface.models import iresnet, mobilefacenet  # noqa: F401  (registers the families)
from otface.models.base import BACKBONES, Backbone
from otface.models.iresnet import IResNet
from otface.models.mobilefacenet import MobileFaceNet

__all__ = ["BACKBONES", "Backbone", "IResNet", "MobileFaceNet", "build_backbone"]


def build_backbone(name: str, embedding_size: int = 512, **kwargs: Any) -> Backbone:
    """Build the backbone registered as ``name`` (see ``BACKBONES.names()``).

    Extra keyword arguments go to the family's constructor (e.g. ``input_size``, ``dropout``,
    ``width`` for IResNet; ``input_size``, ``scale``, ``blocks`` for MobileFaceNet).
    """
    return BACKBONES.build(name, embedding_size=embedding_size, **kwargs)
