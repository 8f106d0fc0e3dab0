"""Optimal transport: cosine costs between point clouds and batched log-domain Sinkhorn (SPEC §1)."""

from otface.ot.cost import cosine_cost
from otface.ot.sinkhorn import SinkhornPotentials, cosine_sinkhorn, sinkhorn, sinkhorn_plan, sinkhorn_potentials

__all__ = ["SinkhornPotentials", "cosine_cost", "cosine_sinkhorn", "sinkhorn", "sinkhorn_plan", "sinkhorn_potentials"]
