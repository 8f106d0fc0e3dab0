"""Pictures of evaluation results."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from otface.eval.verification import curve_auc  # noqa: E402


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """Save ROC curves {name: (fpr, tpr)} as a PNG at ``path`` (parent folders created).

    The false-accept axis is logarithmic, starting at the decade below the smallest positive FAR
    of any curve; the legend gives each curve's AUC. Returns the path.
    """
    if not curves:
        raise ValueError("no curves to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    smallest = 1.0
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if fpr.shape != tpr.shape or fpr.ndim != 1:
            raise ValueError(f"curve {name!r}: fpr and tpr must be 1-D of one length, got {fpr.shape}, {tpr.shape}")
        order = np.argsort(fpr, kind="stable")
        keep = order[fpr[order] > 0]  # the log axis cannot show FAR = 0
        smallest = min(smallest, fpr[keep].min(initial=1.0))
        ax.plot(fpr[keep], tpr[keep], label=f"{name} (AUC {curve_auc(fpr, tpr):.4f})")
    ax.set_xscale("log")
    ax.set_xlim(10 ** np.floor(np.log10(smallest)) if smallest < 1 else 1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_cmc(curves: Mapping[str, Sequence[float]], path: str | Path, title: str = "CMC") -> Path:
    """Save cumulative match characteristic curves {name: identification rate at ranks 1..R} as a
    PNG at ``path`` (parent folders created); the legend gives each curve's rank-1. Returns the path."""
    if not curves:
        raise ValueError("no curves to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, rates in curves.items():
        rates = np.asarray(rates, dtype=float)
        if rates.ndim != 1 or len(rates) == 0:
            raise ValueError(f"curve {name!r}: expected a non-empty 1-D rate per rank, got shape {rates.shape}")
        ranks = np.arange(1, len(rates) + 1)
        ax.plot(ranks, 100 * rates, marker="o", label=f"{name} (rank-1 {100 * rates[0]:.2f} %)")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
