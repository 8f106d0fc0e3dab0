"""Which settings a resumed run may change.

A checkpoint's weights, optimiser state and position in the batch sequence mean something only
under the settings that produced them: another head, batch size or seed would silently turn the
rest of the run into a different one. ``--resume`` therefore accepts changes of the keys in
:data:`RESUMABLE` alone -- how long to train, how to log, validate and compute -- and refuses any
other change in one message that lists them all.
"""

from __future__ import annotations

import functools
from typing import Any

from otface.config import Config, describe
from otface.errors import ConfigError

RESUMABLE = frozenset({
    "optim.epochs",  # more epochs (never fewer than already trained)
    "train.log_interval", "train.val_interval", "train.checkpoint_steps", "train.progress",
    "train.max_bad_steps", "train.threads", "train.device", "train.deterministic",
    "data.num_workers", "data.val_sets", "data.max_skip_fraction",
    "data.synthetic.workers", "data.synthetic.cache_dir",  # render processes, cache location: same data
    "ot.chunk_size",  # memory bound of the OT solve: same values
    "train.compile", "train.channels_last",  # how the backbone is computed, not what
})


def flatten(cfg: Config) -> dict[str, Any]:
    """{dotted key: value} of every leaf key of :func:`otface.config.describe` (a mapping or list
    value is one leaf)."""
    return {key: functools.reduce(getattr, key.split("."), cfg) for key, *_ in describe()}


def resume_changes(saved: Config, new: Config, epochs_done: int) -> dict[str, list[Any]]:
    """{key: [saved value, new value]} of the settings ``new`` changes, all in RESUMABLE.

    Raises :class:`ConfigError` listing every changed key outside RESUMABLE, or when
    ``optim.epochs`` is below the ``epochs_done`` already trained.
    """
    old, cur = flatten(saved), flatten(new)
    changes = {key: [old[key], cur[key]] for key in cur if cur[key] != old[key]}
    refused = [key for key in changes if key not in RESUMABLE]
    if refused:
        listed = ", ".join(f"{key} ({changes[key][0]!r} -> {changes[key][1]!r})" for key in refused)
        raise ConfigError(f"--resume cannot change {listed}: the checkpoint's state was trained with the old "
                          "value(s); start a new run (another --out) to train with them")
    if new.optim.epochs < epochs_done:
        raise ConfigError(f"--resume with optim.epochs={new.optim.epochs}, but {epochs_done} epochs are already "
                          "trained")
    return changes
