"""Losses: OTFace's hard-group mining and optimal-transport loss (SPEC §1)."""

from otface.losses.mining import mine_hard_groups, unique_pairs
from otface.losses.ot_loss import OTLoss, OTLossOutput

__all__ = ["OTLoss", "OTLossOutput", "mine_hard_groups", "unique_pairs"]
