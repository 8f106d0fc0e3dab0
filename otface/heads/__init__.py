"""Margin-based softmax heads, built by name.

Adding a head: subclass :class:`MarginHead`, override ``margin_cos(cos_target)``, and register
it with one line below.
"""

from __future__ import annotations

import inspect
from typing import Any

from otface.heads.arcface import ArcFace
from otface.heads.base import MarginHead
from otface.heads.cosface import CosFace
from otface.registry import Registry

HEADS: Registry[MarginHead] = Registry("head")
HEADS.register("arcface")(ArcFace)
HEADS.register("cosface", "am_softmax")(CosFace)


def build_head(name: str, embedding_size: int, num_classes: int, **hyper: Any) -> MarginHead:
    """Build the head ``name`` with hyper-parameters such as ``scale`` and ``margin``.

    Unset hyper-parameters take the head's paper defaults; an unknown one is a TypeError that
    names it and lists those the head accepts.
    """
    factory = HEADS.get(name)
    accepted = list(inspect.signature(factory).parameters)[2:]  # after embedding_size, num_classes
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise TypeError(f"head {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                        f"it accepts: {', '.join(accepted)}")
    return factory(embedding_size, num_classes, **hyper)


__all__ = ["HEADS", "MarginHead", "ArcFace", "CosFace", "build_head"]
