"""Counted skips of unreadable data: ``on_error`` 'raise' (the default) or 'skip'.

By default a corrupt image stops the work with an error naming the file and record. When the user
asks for skips, readers list what they leave out (:func:`raise_or_skip`); in training,
:class:`CatchBadSamples` turns such an item into a :class:`BadSample` and :func:`collate_skipping`
drops it from its batch -- image and label together, so no label moves to another image -- and
hands it to the trainer, which raises its error (``on_error='raise'``: in the main process, not
buried in a loader worker's traceback) or counts, logs and reports it.

Only :class:`~otface.errors.DataError` -- a bad file or record -- is caught; any other exception
is a bug and propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from otface.errors import DataError
from otface.options import ON_ERROR


def check_on_error(on_error: str) -> None:
    """``ValueError`` unless ``on_error`` is one of ``ON_ERROR``."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def raise_or_skip(message: str, on_error: str, skipped: list[tuple[Any, str]], key: Any) -> None:
    """Raise ``DataError(message)`` when ``on_error`` is 'raise'; else record ``(key, message)``
    in ``skipped``. ``message`` names the file and where it was listed."""
    if on_error == "raise":
        raise DataError(message)
    skipped.append((key, message))


@dataclass(frozen=True)
class BadSample:
    """A training item that could not be read: its dataset index and the error, whose message
    names the file and record."""

    index: int
    error: DataError

    @property
    def reason(self) -> str:
        return str(self.error)


class CatchBadSamples(Dataset):
    """``dataset`` with every unreadable item (a :class:`~otface.errors.DataError` raised)
    replaced by a :class:`BadSample`; ``labels``, ``num_classes`` and ``skipped`` (records dropped when the data
    set was opened) are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def skipped(self) -> list[tuple[int, str]]:
        return self.dataset.skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DataError as exc:
            return BadSample(int(index), exc)


def collate_skipping(
    batch: Sequence[Any], transform: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[BadSample]]:
    """(images (B', 3, H, W), labels (B',), bad samples) of a batch; images and labels are None
    when every item of the batch was bad. ``transform`` maps the stacked images (e.g.
    ``transforms.network_input``, so that a CPU run does it in the loader's workers)."""
    bad = [item for item in batch if isinstance(item, BadSample)]
    good = [item for item in batch if not isinstance(item, BadSample)]
    if not good:
        return None, None, bad
    images, labels = default_collate(good)
    return (transform(images) if transform is not None else images), labels, bad
