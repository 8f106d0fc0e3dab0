"""Several output files written together, so that readers never see a half-written set."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence


@contextlib.contextmanager
def staged_files(folder: Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths in ``folder``, one per name in ``names``, for the block to write.

    When the block ends normally, any existing ``folder/names[-1]`` (the file readers open first,
    e.g. ``property``) is removed, then the files are renamed into place in order, the last name
    last: an interruption between the renames leaves no complete-looking set. When the block
    raises, the temporaries are deleted and the files already in ``folder`` are left as they were.
    """
    tmp = {name: folder / f".{name}.tmp{os.getpid()}" for name in names}
    try:
        yield tmp
        (folder / names[-1]).unlink(missing_ok=True)
        for name in names:
            os.replace(tmp[name], folder / name)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
