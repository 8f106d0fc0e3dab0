"""Unreadable training data under ``data.on_error=skip``: counted, logged, kept by name (the first
KEPT_BAD_SAMPLES), and a :class:`~otface.errors.RunError` once more than ``data.max_skip_fraction``
of the records, or of the samples drawn so far, was unreadable."""

from __future__ import annotations

import logging
from pathlib import Path

from otface.data.skipping import BadSample
from otface.errors import RunError
from otface.train.state import TrainState

log = logging.getLogger("otface.train")

KEPT_BAD_SAMPLES = 100  # skipped samples listed by name in the checkpoint and results (all are counted)


def check_records_left_out(dataset, root: Path, max_fraction: float) -> None:
    """Log the records ``dataset.skipped`` ((key, reason) pairs) dropped when the training set at
    ``root`` was opened; a RunError when they are more than ``max_fraction`` of all its records."""
    skipped = dataset.skipped
    for key, reason in skipped:
        log.warning("unreadable record %d left out of the training set: %s", key, reason)
    total = len(dataset) + len(skipped)
    if skipped and len(skipped) > max_fraction * total:
        raise RunError(f"{len(skipped)} of the {total} records of {root} are unreadable, more than "
                       f"data.max_skip_fraction={max_fraction:g}; first: {skipped[0][1]}")


def record_bad_samples(state: TrainState, bad: list[BadSample], lost: int) -> None:
    """Count ``lost`` skipped samples (of all processes) in ``state``; log and keep this process's ``bad``."""
    state.skipped_samples += lost
    for sample in bad:
        if len(state.bad_samples) < KEPT_BAD_SAMPLES:
            state.bad_samples.append([sample.index, sample.reason])
        log.warning("skipped sample %d (%d skipped in all): %s", sample.index, state.skipped_samples, sample.reason)


def check_skipped(state: TrainState, out_of: int, max_fraction: float) -> None:
    """A RunError when more than ``max_fraction`` of ``out_of`` samples were skipped."""
    if state.skipped_samples > max_fraction * out_of:
        first = state.bad_samples[0][1] if state.bad_samples else ""
        raise RunError(f"{state.skipped_samples} unreadable training samples skipped, more than "
                       f"data.max_skip_fraction={max_fraction:g} of {out_of}; first: {first}")
