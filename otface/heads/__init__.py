"""Margin-based softmax heads, built by name (SPEC §2).

Adding a head: subclass :class:`MarginHead`, override ``margin_cos(cos_target)`` (the target
logit only) or ``adjust(cos, labels)`` (the whole cosine matrix), register it where it is
defined with ``@HEADS.register("name")``, and import its module here. Any head can then be
wrapped by a :data:`HEAD_WRAPPERS` entry (``focal``, ``hm``) without further code.
"""

from __future__ import annotations

from typing import Any

from otface.errors import UnknownNameError, UnknownParameterError
from otface.heads.arcface import ArcFace
from otface.heads.base import HEADS, MarginHead
from otface.heads.combined import CombinedMargin
from otface.heads.cosface import CosFace
from otface.heads.curricular import CurricularFace
from otface.heads.elastic import ElasticArcFace, ElasticArcFacePlus, ElasticCosFace, ElasticCosFacePlus
from otface.heads.focal import Focal
from otface.heads.hard_mining import HardMining
from otface.heads.mining import HEAD_WRAPPERS, MiningHead
from otface.heads.mv_softmax import MVAMSoftmax, MVArcSoftmax
from otface.heads.normface import NormFace
from otface.heads.softmax import Softmax
from otface.heads.sphereface import SphereFace
from otface.registry import accepted_parameters


def _hyper_parameters(factory: Any, skip: int) -> list[str]:
    """The keyword hyper-parameters of a head class (after embedding_size, num_classes: skip 2)
    or of a wrapper class (after the wrapped head: skip 1)."""
    return accepted_parameters(factory)[skip:]


def _check(kind: str, name: str, given: dict[str, Any], accepted: list[str]) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise UnknownParameterError(f"{kind} {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                                    f"it accepts: {', '.join(accepted) or 'none'}")


def build_head(name: str, embedding_size: int, num_classes: int, wrapper: str | None = None,
               wrapper_params: dict[str, Any] | None = None, **hyper: Any) -> MarginHead | MiningHead:
    """Build the head ``name`` with hyper-parameters such as ``scale`` and ``margin``, wrapped in
    ``wrapper`` (a :data:`HEAD_WRAPPERS` name: ``"focal"``, :class:`~otface.heads.focal.Focal`, or
    ``"hm"``, :class:`~otface.heads.hard_mining.HardMining`) with ``wrapper_params`` when given.

    Unset hyper-parameters take the paper defaults; an unknown one is an
    :class:`~otface.errors.UnknownParameterError` (a TypeError) that names it and lists those
    accepted. Sugar: a name ``<wrapper>_<head>`` that is not itself a head is ``<head>`` in that
    wrapper, the hyper-parameters the wrapper takes going to it, those both take written
    ``<wrapper>.<p>`` for the wrapper and ``<head>.<p>`` for the head.
    """
    if wrapper is None and name not in HEADS:
        prefix, sep, inner = name.partition("_")
        if sep and prefix in HEAD_WRAPPERS:
            return _build_sugar(prefix, inner, embedding_size, num_classes, hyper)
    factory = HEADS.get(name)
    _check("head", name, hyper, _hyper_parameters(factory, 2))
    head = factory(embedding_size, num_classes, **hyper)
    if wrapper is None:
        return head
    wrap = HEAD_WRAPPERS.get(wrapper)
    _check("head wrapper", wrapper, wrapper_params or {}, _hyper_parameters(wrap, 1))
    return wrap(head, **(wrapper_params or {}))


def _build_sugar(prefix: str, inner: str, embedding_size: int, num_classes: int,
                 hyper: dict[str, Any]) -> MiningHead:
    """build_head("<prefix>_<inner>", ...): ``hyper`` routed between the wrapper and the head."""
    if inner not in HEADS:
        forms = " or ".join(f"{w}_<name>" for w in HEAD_WRAPPERS.names())
        if inner.partition("_")[0] in HEAD_WRAPPERS:
            raise UnknownNameError(f"head {prefix}_{inner!r}: {prefix}_ cannot wrap {inner!r}, wrappers do not "
                                   f"stack; use {forms} with a registered head")
        raise UnknownNameError(f"unknown head {prefix + '_' + inner!r}: {inner!r} is not registered; "
                               f"known: {', '.join(HEADS.names())}")
    own = _hyper_parameters(HEAD_WRAPPERS.get(prefix), 1)
    theirs = _hyper_parameters(HEADS.get(inner), 2)
    route = {(f"{prefix}.{p}" if p in theirs else p): ("wrapper", p) for p in own}
    route |= {(f"{inner}.{p}" if p in own else p): ("head", p) for p in theirs}
    _check("head", f"{prefix}_{inner}", hyper, list(route))
    kwargs: dict[str, dict[str, Any]] = {"head": {}, "wrapper": {}}
    for key, value in hyper.items():
        target, param = route[key]
        kwargs[target][param] = value
    return build_head(inner, embedding_size, num_classes, prefix, kwargs["wrapper"], **kwargs["head"])


__all__ = [
    "HEADS", "HEAD_WRAPPERS", "MarginHead", "MiningHead", "ArcFace", "CombinedMargin", "CosFace", "CurricularFace",
    "ElasticArcFace", "ElasticArcFacePlus", "ElasticCosFace", "ElasticCosFacePlus", "Focal", "HardMining",
    "MVAMSoftmax", "MVArcSoftmax", "NormFace", "Softmax", "SphereFace", "build_head",
]
