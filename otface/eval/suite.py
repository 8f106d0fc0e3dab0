"""``otface eval``: one model on a list of benchmarks -> a markdown table, JSON and pictures.

Benchmarks (SPEC §6), each optional:

- verification ``.bin`` sets (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW, ...): accuracy over 10 folds,
  TAR at FAR 1e-3, AUC (:func:`otface.eval.verification.verification`);
- IJB-B / IJB-C 1:1: TAR at FAR 1e-6 ... 1e-1 (:func:`otface.eval.ijb.ijb_verification`);
- MegaFace-style identification: rank-1 and the CMC, TAR at FAR 1e-6
  (:func:`otface.eval.identification.megaface_identification`), distractors embedded in chunks.

:func:`write_report` writes ``results.md``, ``results.json``, ``roc_verification.png``,
``roc_ijb.png`` and ``cmc_megaface.png`` (those that apply) into the output folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from otface.data.testpacks.megaface import load_images, read_megaface
from otface.errors import ConfigError, DataError, RunError
from otface.eval.embed import embed_images
from otface.eval.identification import megaface_identification
from otface.eval.ijb import FARS, ijb_verification
from otface.eval.model import LoadedModel
from otface.eval.plots import plot_cmc, plot_roc
from otface.eval.verification_suite import VerificationSuite, summary_notes
from otface.progress import progress_bar

MEGAFACE_FARS = (1e-6,)


@dataclass
class EvalReport:
    """Results by benchmark kind (JSON-serialisable) and the curves to draw."""

    model: str
    verification: dict[str, dict[str, Any]] = field(default_factory=dict)
    ijb: dict[str, dict[str, Any]] = field(default_factory=dict)
    megaface: dict[str, Any] | None = None
    roc_verification: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    roc_ijb: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def evaluate_bins(loaded: LoadedModel, paths: Sequence[str | os.PathLike], report: EvalReport,
                  device: torch.device, batch_size: int = 256, progress: bool = True) -> None:
    """Verification on each ``.bin`` (named by its file stem) into ``report``."""
    names = [Path(p).stem for p in paths]
    if len(set(names)) != len(names):
        shared = [str(p) for p, name in zip(paths, names) if names.count(name) > 1]
        raise ConfigError(f"two verification sets share a name (the file stem): {', '.join(shared)}")
    suite = VerificationSuite({name: Path(p) for name, p in zip(names, paths)}, image_size=loaded.input_size,
                              batch_size=batch_size)
    report.verification, report.roc_verification = suite.run(loaded.model, device, progress)


def evaluate_ijb_set(loaded: LoadedModel, root: str | os.PathLike, name: str, report: EvalReport,
                     device: torch.device, batch_size: int = 256, on_error: str = "raise",
                     num_workers: int = 0, progress: bool = True, flip_test: bool = True,
                     norm_score: bool = True, detector_score: bool = True) -> None:
    """IJB-B or IJB-C 1:1; the three modes default to insightface's (all on)."""
    r = ijb_verification(loaded.model, root, name, flip_test=flip_test, norm_score=norm_score,
                         detector_score=detector_score, on_error=on_error, image_size=loaded.input_size,
                         batch_size=batch_size, device=device, num_workers=num_workers, progress=progress)
    report.ijb[r["set"]] = {
        "tar_at_far": {f"{far:g}": float(tar) for far, tar in r["tar_at_far"].items()},
        "auc": float(r["auc"]),
        "pairs": int(r["num_pairs"]),
        "templates": int(r["num_templates"]),
        "images": int(r["num_images"]),
        "skipped_pairs": int(r["skipped_pairs"]),
        "mode": {"flip_test": flip_test, "norm_score": norm_score, "detector_score": detector_score},
        "failed_images": r["failed_images"],
    }
    report.roc_ijb[r["set"]] = (r["fpr"], r["tpr"])


def evaluate_megaface(loaded: LoadedModel, root: str | os.PathLike, report: EvalReport, device: torch.device,
                      batch_size: int = 256, chunk: int = 10_000, on_error: str = "raise",
                      progress: bool = True, search_options: dict[str, Any] | None = None) -> None:
    """MegaFace-style identification; probes and distractors are decoded ``chunk`` at a time."""
    lists = read_megaface(root)
    features, labels, failed = {}, None, []
    for which, n, list_file in (("probes", len(lists.probe_paths), lists.probe_list),
                                ("distractors", len(lists.distractor_paths), lists.distractor_list)):
        if n == 0:
            raise DataError(f"{list_file}: no MegaFace {which} listed (after noise removal)")
        parts = []
        for start in progress_bar(range(0, n, chunk), desc=f"megaface {which}", enabled=progress):
            loaded_images = load_images(lists, which, start, start + chunk, on_error=on_error)
            failed.extend(message for _, message in loaded_images.skipped)
            if len(loaded_images.images):
                parts.append(embed_images(loaded.model, loaded_images.images, loaded.input_size, batch_size,
                                          device).numpy())
            if which == "probes":
                labels = loaded_images.labels if labels is None else np.concatenate([labels, loaded_images.labels])
        if not parts:
            raise RunError(f"{list_file}: none of the {n} MegaFace {which} could be read (first: {failed[-n]})")
        features[which] = np.concatenate(parts)
    r = megaface_identification(features["probes"], labels, features["distractors"], fars=MEGAFACE_FARS,
                                search_options=search_options)
    report.megaface = {
        "rank1": float(r["rank1"]),
        "cmc": [float(v) for v in r["cmc"]],
        "tar_at_far": {f"{far:g}": float(tar) for far, tar in r["tar_at_far"].items()},
        "counts": {k: int(v) for k, v in r["counts"].items()},
        "removed_by_noise_lists": len(lists.removed_probes) + len(lists.removed_distractors),
        "failed_images": failed,
    }


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def markdown(report: EvalReport) -> str:
    """The report as markdown tables."""
    lines = [f"# Evaluation of {report.model}", ""]
    if report.verification:
        lines += ["## Verification (10 folds)", "",
                  "| set | pairs | accuracy (%) | std (%) | TAR@FAR=1e-3 (%) | AUC |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in report.verification.items():
            lines.append(f"| {name} | {r['pairs']} | {_pct(r['accuracy'])} | {_pct(r['accuracy_std'])} | "
                         f"{_pct(r['tar_at_far'])} | {r['auc']:.4f} |")
        lines.append("")
        notes = [note for name, r in report.verification.items() for note in summary_notes(name, r)]
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    if report.ijb:
        fars = [f"{f:g}" for f in FARS]
        lines += ["## IJB 1:1 verification, TAR (%) at FAR", "",
                  "| set | " + " | ".join(fars) + " | AUC | pairs | skipped pairs |",
                  "|---|" + "---:|" * (len(fars) + 3)]
        for name, r in report.ijb.items():
            tars = " | ".join(_pct(r["tar_at_far"][f]) for f in fars)
            lines.append(f"| {name} | {tars} | {r['auc']:.4f} | {r['pairs']} | {r['skipped_pairs']} |")
        lines.append("")
    if report.megaface is not None:
        r = report.megaface
        c = r["counts"]
        lines += ["## MegaFace-style identification", "",
                  "| rank-1 (%) | TAR@FAR=1e-6 (%) | probes | distractors | trials |", "|---:|---:|---:|---:|---:|",
                  f"| {_pct(r['rank1'])} | {_pct(r['tar_at_far']['1e-06'])} | {c['probes']} | {c['distractors']} "
                  f"| {c['trials']} |", ""]
    failed = [*(m for r in report.ijb.values() for _, m in r["failed_images"]),
              *(report.megaface["failed_images"] if report.megaface else [])]
    if failed:
        lines += [f"Skipped {len(failed)} unreadable images (--skip-bad); first ones:", ""]
        lines += [f"- {m}" for m in failed[:20]] + [""]
    return "\n".join(lines)


def write_report(report: EvalReport, out: str | os.PathLike) -> dict[str, Path]:
    """Write results.md, results.json and the pictures into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "json": out / "results.json"}
    paths["markdown"].write_text(markdown(report))
    data = {"model": report.model, "verification": report.verification, "ijb": report.ijb,
            "megaface": report.megaface}
    paths["json"].write_text(json.dumps(data, indent=2))
    if report.roc_verification:
        paths["roc_verification"] = plot_roc(report.roc_verification, out / "roc_verification.png",
                                             title="Verification ROC")
    if report.roc_ijb:
        paths["roc_ijb"] = plot_roc(report.roc_ijb, out / "roc_ijb.png", title="IJB 1:1 ROC")
    if report.megaface is not None:
        paths["cmc_megaface"] = plot_cmc({"MegaFace-style": report.megaface["cmc"]}, out / "cmc_megaface.png")
    return paths
