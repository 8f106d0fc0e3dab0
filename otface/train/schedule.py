"""Learning-rate schedule of the paper's recipe (SPEC §7): step decay at epoch milestones, with an
optional linear warm-up. Expressed per optimiser step so that gradient accumulation holds it."""

from __future__ import annotations

import bisect
from typing import Sequence


def lr_factor(
    step: int,
    steps_per_epoch: int,
    milestones: Sequence[float],
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    ``gamma ** k`` where k counts the milestones (in epochs) already reached, times a linear
    warm-up ``(step + 1) / warmup_steps`` during the first ``warmup_epochs``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    epoch = step / steps_per_epoch
    factor = gamma ** bisect.bisect_right(sorted(milestones), epoch)
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor
