"""Evaluation protocols."""

from otface.eval.embed import extract_embeddings
from otface.eval.plots import plot_roc
from otface.eval.verification import verification

__all__ = ["extract_embeddings", "plot_roc", "verification"]
