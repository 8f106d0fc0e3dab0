"""Progress bars on terminals only: a log file or a pipe gets otface's periodic log lines instead
of tqdm's carriage-return redraws."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(*args: Any, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(*args, **kwargs)``, drawn when ``enabled`` and standard error is a terminal."""
    return tqdm(*args, disable=None if enabled else True, **kwargs)
