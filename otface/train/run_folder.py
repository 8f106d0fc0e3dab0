"""One process per run folder: a lock, and the files a run writes besides its checkpoint.

``otface train`` holds :func:`hold_run_folder` for the whole run. The lock is an advisory
``flock`` on ``run.lock``, which the kernel releases however the holder ends (``kill -9``
included), so a lock left behind by a killed run is free and is taken over; the file keeps the
holder's PID and host for the message a second process gets. (``flock`` works on local disks; on
network file systems it may not exclude processes of other machines.) Processes forked while the
lock is held -- data loader workers -- close their copy of it, so that a killed run's workers,
which outlive it for a while, do not keep its folder locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from otface.checkpoint import remove_stale_temporaries
from otface.errors import RunError

log = logging.getLogger("otface.train")

LOCK = "run.lock"
CHECKPOINT = "last.pt"
_HELD: set[int] = set()  # this process's lock descriptors


def _release_in_child() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_release_in_child)


@contextlib.contextmanager
def hold_run_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock for the block; then remove the checkpoint
    temporaries an interrupted save left there.

    Raises :class:`RunError` when another process holds the folder (naming its PID) or the
    folder cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunError(f"cannot write to run folder {folder}: {err.strerror or err}") from None
    held = False
    try:
        previous = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or previous or "unknown"
            raise RunError(f"run folder {folder} is in use by process {holder} (lock {folder / LOCK}); "
                           "wait for it to end, or choose another --out") from None
        held = True
        _HELD.add(fd)
        if previous:
            log.warning("run folder %s: took over the lock left by process %s, which no longer holds it",
                        folder, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        for tmp in remove_stale_temporaries(folder / CHECKPOINT):
            log.warning("removed %s, left by an interrupted checkpoint write", tmp)
        yield folder
    finally:
        if held:
            os.ftruncate(fd, 0)  # a PID left in the file marks a holder that was killed
            _HELD.discard(fd)
        os.close(fd)
