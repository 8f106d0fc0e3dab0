"""Margin-based softmax heads, built by name (SPEC §2).

Adding a head: subclass :class:`MarginHead`, override ``margin_cos(cos_target)`` (the target
logit only) or ``adjust(cos, labels)`` (the whole cosine matrix), and register it with one line
below. Its ``focal_`` and ``hm_`` variants then exist without further code.
"""

from __future__ import annotations

import inspect
from typing import Any

from otface.errors import UnknownNameError, UnknownParameterError
from otface.heads.arcface import ArcFace
from otface.heads.base import MarginHead
from otface.heads.combined import CombinedMargin
from otface.heads.cosface import CosFace
from otface.heads.curricular import CurricularFace
from otface.heads.elastic import ElasticArcFace, ElasticArcFacePlus, ElasticCosFace, ElasticCosFacePlus
from otface.heads.focal import Focal
from otface.heads.hard_mining import HardMining
from otface.heads.mining import MiningHead
from otface.heads.mv_softmax import MVAMSoftmax, MVArcSoftmax
from otface.heads.normface import NormFace
from otface.heads.softmax import Softmax
from otface.heads.sphereface import SphereFace
from otface.registry import Registry

HEADS: Registry[MarginHead] = Registry("head")
HEADS.register("softmax")(Softmax)
HEADS.register("normface")(NormFace)
HEADS.register("sphereface", "a_softmax")(SphereFace)
HEADS.register("cosface", "am_softmax")(CosFace)
HEADS.register("arcface")(ArcFace)
HEADS.register("combined")(CombinedMargin)
HEADS.register("curricular")(CurricularFace)
HEADS.register("elastic_arc")(ElasticArcFace)
HEADS.register("elastic_cos")(ElasticCosFace)
HEADS.register("elastic_arc_plus")(ElasticArcFacePlus)
HEADS.register("elastic_cos_plus")(ElasticCosFacePlus)
HEADS.register("mv_am")(MVAMSoftmax)
HEADS.register("mv_arc")(MVArcSoftmax)


def build_head(name: str, embedding_size: int, num_classes: int, **hyper: Any) -> MarginHead | MiningHead:
    """Build the head ``name`` with hyper-parameters such as ``scale`` and ``margin``.

    ``focal_<head>`` and ``hm_<head>`` wrap any registered head in the focal loss
    (:class:`~otface.heads.focal.Focal`, ``gamma``) or in HM-Softmax
    (:class:`~otface.heads.hard_mining.HardMining`, ``ratio``); the other hyper-parameters go to the
    wrapped head. A name both accept is written ``focal.gamma`` for the wrapper and
    ``sphereface.gamma`` for the head. Wrappers do not stack.

    Unset hyper-parameters take the paper defaults; an unknown one is an
    :class:`~otface.errors.UnknownParameterError` (a TypeError) that names it and lists those
    accepted.
    """
    wrappers = {"focal": Focal, "hm": HardMining}
    prefix, sep, inner = name.partition("_")
    wrapper = wrappers.get(prefix) if sep and name not in HEADS else None
    if wrapper is None:
        factory = HEADS.get(name)
        route = {p: ("head", p) for p in list(inspect.signature(factory).parameters)[2:]}
    else:
        if inner not in HEADS:
            forms = " or ".join(f"{w}_<name>" for w in wrappers)
            if inner.partition("_")[0] in wrappers:
                raise UnknownNameError(f"head {name!r}: {prefix}_ cannot wrap {inner!r}, wrappers do not stack; "
                               f"use {forms} with a registered head")
            raise UnknownNameError(f"unknown head {name!r}: {inner!r} is not registered; "
                           f"known: {', '.join(HEADS.names())}")
        factory = HEADS.get(inner)
        own = list(inspect.signature(wrapper).parameters)[1:]  # after the wrapped head
        theirs = list(inspect.signature(factory).parameters)[2:]  # after embedding_size, num_classes
        route = {(f"{prefix}.{p}" if p in theirs else p): ("wrapper", p) for p in own}
        route |= {(f"{inner}.{p}" if p in own else p): ("head", p) for p in theirs}
    unknown = sorted(set(hyper) - set(route))
    if unknown:
        raise UnknownParameterError(f"head {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                        f"it accepts: {', '.join(route)}")
    kwargs: dict[str, dict[str, Any]] = {"head": {}, "wrapper": {}}
    for key, value in hyper.items():
        target, param = route[key]
        kwargs[target][param] = value
    head = factory(embedding_size, num_classes, **kwargs["head"])
    return head if wrapper is None else wrapper(head, **kwargs["wrapper"])


__all__ = [
    "HEADS", "MarginHead", "MiningHead", "ArcFace", "CombinedMargin", "CosFace", "CurricularFace",
    "ElasticArcFace", "ElasticArcFacePlus", "ElasticCosFace", "ElasticCosFacePlus", "Focal", "HardMining",
    "MVAMSoftmax", "MVArcSoftmax", "NormFace", "Softmax", "SphereFace", "build_head",
]
