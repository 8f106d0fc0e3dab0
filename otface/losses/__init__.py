"""Losses: OTFace's hard-group mining and optimal-transport loss (SPEC §1), and the auxiliary
losses that combine with any head (SPEC §3): L = L_head + w_ot L_OT + sum_k w_k L_k.

Adding an auxiliary loss: an ``nn.Module`` as :mod:`otface.losses.base` describes, registered
where it is defined, its module imported here.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from otface.errors import UnknownParameterError
from otface.losses.base import AUX_LOSSES
from otface.losses.center import CenterLoss
from otface.losses.contrastive import ContrastiveLoss
from otface.losses.discface import DiscFaceLoss
from otface.losses.mining import mine_hard_groups, unique_pairs
from otface.losses.ot_loss import OTLoss, OTLossOutput
from otface.losses.triplet import TripletLoss


def build_aux_loss(name: str, embedding_size: int, num_classes: int, **hyper: Any) -> nn.Module:
    """Build the auxiliary loss ``name``; it receives ``embedding_size`` / ``num_classes`` if its
    constructor names them. An unknown hyper-parameter is an UnknownParameterError (a TypeError)
    listing the accepted ones."""
    factory = AUX_LOSSES.get(name)
    params = inspect.signature(factory).parameters
    context = {k: v for k, v in (("embedding_size", embedding_size), ("num_classes", num_classes)) if k in params}
    accepted = [p for p in params if p not in context]
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise UnknownParameterError(f"auxiliary loss {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
                        f"it accepts: {', '.join(accepted) or 'none'}")
    return factory(**context, **hyper)


__all__ = [
    "AUX_LOSSES", "CenterLoss", "ContrastiveLoss", "DiscFaceLoss", "OTLoss", "OTLossOutput", "TripletLoss",
    "build_aux_loss", "mine_hard_groups", "unique_pairs",
]
