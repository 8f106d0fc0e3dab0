"""Verification on a run's validation sets (SPEC §6), as used during and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from otface.data.binset import load_verification_set
from otface.data.transforms import normalize, resize
from otface.eval import extract_embeddings, plot_roc, verification

SUMMARY_KEYS = ("accuracy", "accuracy_std", "threshold", "tar_at_far", "tar_at_far_std", "far_target", "auc")


class VerificationSuite:
    """Loads the ``.bin`` sets once (as uint8) and evaluates a backbone on all of them."""

    def __init__(self, paths: Mapping[str, Path], image_size: int = 112, batch_size: int = 256) -> None:
        self.image_size = image_size
        self.batch_size = batch_size
        self.sets = {name: load_verification_set(path) for name, path in paths.items()}

    def _embed(self, model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            x = resize(normalize(images[start : start + self.batch_size]), self.image_size)
            chunks.append(extract_embeddings(model, x, batch_size=self.batch_size, device=device))
        return torch.cat(chunks)

    def evaluate(
        self, model: nn.Module, device: torch.device, progress: bool = False, roc_path: Path | None = None
    ) -> dict[str, dict[str, Any]]:
        """{set name: summary metrics} for every set; optionally saves one ROC picture of all."""
        results, curves = {}, {}
        for name, (images, issame) in tqdm(self.sets.items(), desc="verify", disable=not progress):
            emb = self._embed(model, images, device).cpu().numpy()
            r = verification(emb[0::2], emb[1::2], np.asarray(issame, dtype=bool))
            results[name] = {k: float(r[k]) for k in SUMMARY_KEYS if k in r}
            results[name]["pairs"] = int(len(issame))
            curves[name] = (r["fpr"], r["tpr"])
        if roc_path is not None and curves:
            plot_roc(curves, roc_path, title="Verification ROC")
        return results
