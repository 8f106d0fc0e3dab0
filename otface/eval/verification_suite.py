"""Verification on a run's validation sets (SPEC §6), as used during and after training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from otface.data.formats.binset import load_verification_set
from otface.errors import DataError
from otface.eval.embed import embed_images
from otface.eval.plots import plot_roc
from otface.eval.verification import unbalanced_message, verification
from otface.progress import progress_bar

log = logging.getLogger("otface.eval")

SUMMARY_KEYS = ("accuracy", "accuracy_std", "threshold", "tar_at_far", "tar_at_far_std", "far", "far_target", "auc")


def summarise(r: dict[str, Any], pairs: int) -> dict[str, Any]:
    """The JSON summary of :func:`verification`'s result over ``pairs`` pairs. When the set has
    too few impostors to set the target FAR, ``tar_at_far`` (and its std) is None and
    ``tar_at_far_note`` says why; ``far`` is the FAR reached either way."""
    out = {k: float(r[k]) for k in SUMMARY_KEYS} | {"pairs": int(pairs), "unbalanced_folds": r["unbalanced_folds"]}
    if not r["tar_at_far_defined"]:
        out["tar_at_far"] = out["tar_at_far_std"] = None
        out["tar_at_far_note"] = (f"FAR {r['far_target']:g} needs >= {1 / r['far_target']:.0f} impostor pairs "
                                  f"outside each fold, this set has {r['min_impostors']}; FAR reached "
                                  f"{100 * r['far']:.2f} %")
    return out


def summary_notes(name: str, summary: dict[str, Any]) -> list[str]:
    """What a reader of set ``name``'s :func:`summarise` result should know: why TAR@FAR is n/a,
    which folds the pair order unbalanced."""
    notes = [f"{name}: TAR@FAR n/a: {summary['tar_at_far_note']}"] if summary["tar_at_far"] is None else []
    if summary["unbalanced_folds"]:
        notes.append(f"{name}: {unbalanced_message(summary['unbalanced_folds'])}")
    return notes


def format_tar(summary: dict[str, Any]) -> str:
    """TAR@FAR of a :func:`summarise` result in percent, or 'n/a' with the reason."""
    if summary["tar_at_far"] is None:
        return f"n/a ({summary['tar_at_far_note']})"
    return f"{100 * summary['tar_at_far']:.2f} %"


class VerificationSuite:
    """Loads the ``.bin`` sets once (as uint8) and evaluates a backbone on all of them."""

    def __init__(self, paths: Mapping[str, Path], image_size: int = 112, batch_size: int = 256) -> None:
        self.image_size = image_size
        self.batch_size = batch_size
        self.paths = dict(paths)
        self.sets = {name: load_verification_set(path) for name, path in paths.items()}

    def run(self, model: nn.Module, device: torch.device,
            progress: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """({set name: summary metrics}, {set name: (fpr, tpr) ROC}) for every set."""
        results, curves = {}, {}
        for name, (images, issame) in progress_bar(self.sets.items(), desc="verify", enabled=progress):
            emb = embed_images(model, images, self.image_size, self.batch_size, device).numpy()
            try:
                r = verification(emb[0::2], emb[1::2], np.asarray(issame, dtype=bool))
            except DataError as err:
                raise DataError(f"{self.paths[name]}: {err}") from None
            if r["unbalanced_folds"]:
                log.warning("%s: %s", self.paths[name], unbalanced_message(r["unbalanced_folds"]))
            results[name] = summarise(r, len(issame))
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
