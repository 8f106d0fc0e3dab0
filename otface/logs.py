"""otface's log lines: on stderr through tqdm (progress bars stay intact), and into a run's train.log."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from otface.errors import RunError


class _TqdmHandler(logging.Handler):
    """Log lines printed through tqdm so that progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def setup_logging() -> None:
    """otface's log lines (progress, warnings) on stderr, through tqdm."""
    root = logging.getLogger("otface")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    console = _TqdmHandler()
    console.setFormatter(LOG_FORMAT)
    root.addHandler(console)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Also write otface's log lines to ``path`` (appended) during the block."""
    try:
        handler = logging.FileHandler(path)
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}") from None
    handler.setFormatter(LOG_FORMAT)
    root = logging.getLogger("otface")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
