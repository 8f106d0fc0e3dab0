"""The summary a training run prints at its end: a markdown table of the verification results and
its training figures (from the run's results.json contents)."""

from __future__ import annotations

from typing import Any

from otface.eval.verification_suite import summary_notes


def results_table(results: dict[str, Any]) -> str:
    """A markdown table of the verification results and training figures."""
    lines = [
        "| set | pairs | accuracy (%) | std (%) | TAR@FAR=1e-3 (%) | AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["verification"].items():
        tar = "n/a" if r["tar_at_far"] is None else f"{100 * r['tar_at_far']:.2f}"
        lines.append(
            f"| {name} | {r['pairs']} | {100 * r['accuracy']:.2f} | {100 * r['accuracy_std']:.2f} "
            f"| {tar} | {r['auc']:.4f} |"
        )
    t = results["train"]
    lines.extend(note for name, r in results["verification"].items() for note in summary_notes(name, r))
    lines.append("")
    lines.append(
        f"trained {t['epochs']} epochs ({t['steps']} steps, {t['images']} images) in "
        f"{t['train_seconds']:.0f} s: {t['images_per_second']:.1f} images/s, "
        f"{t['hard_groups_per_step']:.1f} hard groups per step, {t['skipped_steps']} skipped steps"
    )
    if t.get("num_skipped_records"):
        lines.append(f"left out {t['num_skipped_records']} unreadable records when opening the training set "
                     "(data.on_error=skip); first ones:")
        lines.extend(f"  record {key}: {reason}" for key, reason in t["skipped_records"][:10])
    if t.get("skipped_samples"):
        lines.append(f"skipped {t['skipped_samples']} unreadable training samples (data.on_error=skip); first ones:")
        lines.extend(f"  sample {index}: {reason}" for index, reason in t["bad_samples"][:10])
    if t.get("world_size", 1) > 1:
        batch = results["config"]["optim"]["batch_size"]
        lines.append(f"trained on {t['world_size']} processes (global batch {batch})")
    if t.get("amp") == "fp16":
        lines.append(f"fp16: final loss scale {t['loss_scale']:g}, {t['overflow_steps']} overflow steps skipped")
    for resume in t.get("resumes", []):
        changed = [f"{key} {old!r} -> {new!r}" for key, (old, new) in resume["changes"].items()]
        before, now = resume.get("world_size", [1, 1])
        changed += [f"{before} -> {now} processes"] * (before != now)
        lines.append(f"resumed at step {resume['step']} with {', '.join(changed)}")
    return "\n".join(lines)
