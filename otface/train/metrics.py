"""What a run records besides its text log: ``metrics.jsonl`` always, TensorBoard events in
``tensorboard/`` when the ``tensorboard`` extra is installed (``pip install otface[tensorboard]``).

Each record is one JSON object per line: ``{"kind": "train", "step": ..., "lr": ..., "loss": ...,
"<term>_loss": ..., "hard_groups": ..., "images_per_second": ...}`` at every log line, and
``{"kind": "validation", "set": ..., "step": ..., "accuracy": ..., ...}`` per verification set.
The same figures go to TensorBoard as scalars ``train/<name>`` and ``<set>/<name>``, and the ROC
picture as an image. A resumed run first drops what was recorded after its checkpoint's step, so
both hold each step once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from otface.files import write_text_atomic

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def tensorboard_writer(folder: Path, purge_step: int) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``folder`` (events from ``purge_step`` on
    dropped), or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is missing: JSON lines only
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def _step(line: str) -> float:
    """The step of a record line; infinite (never kept) for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    return record["step"] if isinstance(record, dict) and isinstance(record.get("step"), int) else math.inf


class MetricsLog:
    """The records of one run folder, written by the process that writes the folder.

    Args:
        run_dir: the run folder.
        resumed_step: the step the run continues from: records after it -- written by a run killed
            after its checkpoint -- are dropped, and so is a line a kill cut short; 0 for a new run.
    """

    def __init__(self, run_dir: Path, resumed_step: int = 0) -> None:
        self.path = run_dir / METRICS
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resumed_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.writer = tensorboard_writer(run_dir / TENSORBOARD, resumed_step + 1)

    def record(self, kind: str, step: int, values: dict[str, Any], group: str | None = None) -> None:
        """One record of ``values`` (numbers; None where a figure is undefined) at ``step``;
        TensorBoard gets the finite numbers as ``<group or kind>/<name>``."""
        row = {"kind": kind, "step": step, **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{group or kind}/{name}", value, step)
        self.writer.flush()

    def picture(self, tag: str, png: Path, step: int) -> None:
        """A PNG picture (the ROC curves) as a TensorBoard image at ``step``."""
        if self.writer is None or not png.is_file():
            return
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
