"""Text lists (landmarks, pairs, meta files, class names), read line by line."""

from __future__ import annotations

import os
from typing import Iterator

from otface.errors import DataError


def numbered_lines(path: str | os.PathLike, newline: str | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of every line of the UTF-8 text file ``path``; text that is not
    UTF-8 is a :class:`DataError` naming the file. ``newline`` as for :func:`open`."""
    with open(path, encoding="utf-8", newline=newline) as f:
        try:
            yield from enumerate(f, 1)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
