"""Verification on a run's validation sets (SPEC §6), as used during and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from otface.data.binset import load_verification_set
from otface.eval.embed import embed_images
from otface.eval.plots import plot_roc
from otface.eval.verification import verification

SUMMARY_KEYS = ("accuracy", "accuracy_std", "threshold", "tar_at_far", "tar_at_far_std", "far_target", "auc")


class VerificationSuite:
    """Loads the ``.bin`` sets once (as uint8) and evaluates a backbone on all of them."""

    def __init__(self, paths: Mapping[str, Path], image_size: int = 112, batch_size: int = 256) -> None:
        self.image_size = image_size
        self.batch_size = batch_size
        self.sets = {name: load_verification_set(path) for name, path in paths.items()}

    def run(self, model: nn.Module, device: torch.device,
            progress: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """({set name: summary metrics}, {set name: (fpr, tpr) ROC}) for every set."""
        results, curves = {}, {}
        for name, (images, issame) in tqdm(self.sets.items(), desc="verify", disable=not progress):
            emb = embed_images(model, images, self.image_size, self.batch_size, device).numpy()
            r = verification(emb[0::2], emb[1::2], np.asarray(issame, dtype=bool))
            results[name] = {k: float(r[k]) for k in SUMMARY_KEYS} | {"pairs": int(len(issame))}
            curves[name] = (r["fpr"], r["tpr"])
        return results, curves

    def evaluate(
        self, model: nn.Module, device: torch.device, progress: bool = False, roc_path: Path | None = None
    ) -> dict[str, dict[str, Any]]:
        """{set name: summary metrics} for every set; optionally saves one ROC picture of all."""
        results, curves = self.run(model, device, progress)
        if roc_path is not None and curves:
            plot_roc(curves, roc_path, title="Verification ROC")
        return results
