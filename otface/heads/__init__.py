"""Margin-based softmax heads, built by name.

Adding a head: subclass :class:`MarginHead`, override ``margin(cos_target)``, and add one line
to the registry below.
"""

from __future__ import annotations

from typing import Any

from otface.heads.arcface import ArcFace
from otface.heads.base import MarginHead
from otface.heads.cosface import CosFace
from otface.registry import Registry

HEADS: Registry[MarginHead] = Registry("head")
HEADS.register("arcface")(ArcFace)
HEADS.register("cosface", "am_softmax")(CosFace)


def build_head(name: str, embedding_size: int, num_classes: int, **hyper: Any) -> MarginHead:
    """Build the head ``name``; an unknown hyper-parameter is a TypeError naming it."""
    return HEADS.build(name, embedding_size, num_classes, **hyper)


__all__ = ["HEADS", "MarginHead", "ArcFace", "CosFace", "build_head"]
