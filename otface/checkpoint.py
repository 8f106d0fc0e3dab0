"""Atomic checkpoints: a crash while saving never destroys the previous checkpoint, and nothing
read back is executed (``torch.load(weights_only=True)``)."""

from __future__ import annotations

import glob
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from otface.errors import InputNotFoundError, ModelFileError, RunError, one_line

TEMPORARY_SUFFIX = ".tmp"


class _WriteErrors(io.RawIOBase):
    """A binary file that remembers the first ``OSError`` its writes raised: torch's archive
    writer replaces it with a ``RuntimeError`` ('unexpected pos ...') that names no cause."""

    def __init__(self, file: io.BufferedWriter) -> None:
        super().__init__()
        self.file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise


def _temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}"))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` with torch.save to a temporary file beside ``path``, fsync it, then rename
    it over ``path`` (an atomic replace on POSIX and Windows).

    A write that fails (full disk, read-only folder) raises :class:`RunError` naming ``path``
    and the cause; the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            sink = _WriteErrors(fh)
            try:
                torch.save(state, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise RunError(f"cannot write checkpoint {path}: {err.strerror or err}; {path} was left as it was") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted :func:`save_checkpoint` calls left beside
    ``path`` (call it only while no other process writes there); returns them."""
    stale = _temporaries(Path(path))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _refused_global(err: pickle.UnpicklingError) -> str | None:
    """The line of torch's weights-only refusal naming the object it would not create, if the
    error is such a refusal (and not bytes that are no pickle at all)."""
    lines = [line.strip() for line in str(err).splitlines()]
    return next((line for line in lines if "GLOBAL" in line), None)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises :class:`~otface.errors.InputNotFoundError` when the file is missing and
    :class:`~otface.errors.ModelFileError` when it is damaged or holds objects other than tensors
    and plain containers (refused: unpickling them could run code from the file); one-line
    messages naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(err)
        if refused is not None:
            raise ModelFileError(f"{path}: refused, it holds more than tensors and plain containers ({refused}); "
                                 "otface never unpickles code from a model file") from None
        detail = next((line.strip() for line in str(err).splitlines() if line.strip().startswith("Unsupported")),
                      "no torch checkpoint")
        raise ModelFileError(f"{path}: not a readable checkpoint (damaged or not one: {detail})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:  # what torch.load raises for damaged archives
        reason = one_line(str(err)).split(". ")[0] or type(err).__name__
        raise ModelFileError(f"{path}: not a readable checkpoint (damaged or truncated: {reason})") from None
    if not isinstance(ckpt, dict):
        raise ModelFileError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def load_into(target: Any, state: Any, path: str | os.PathLike, what: str) -> None:
    """``target.load_state_dict(state)`` (a module or an optimizer; or ``target(state)`` for a
    loading function) for an entry of the checkpoint at ``path``; state that does not fit --
    missing, unexpected or misshapen tensors, other parameter groups, not a mapping -- is a
    :class:`ModelFileError` ``"{path}: {what}: ..."``."""
    load = getattr(target, "load_state_dict", target)
    try:
        load(state)
    except (RuntimeError, ValueError, TypeError) as err:  # what load_state_dict raises for a misfit
        raise ModelFileError(f"{path}: {what}: {one_line(str(err))}") from None


def check_entries(ckpt: dict[str, Any], path: str | os.PathLike, entries: tuple[str, ...]) -> None:
    """:class:`ModelFileError` unless ``ckpt`` (loaded from ``path``) has every key of ``entries``."""
    missing = [key for key in entries if key not in ckpt]
    if missing:
        raise ModelFileError(f"{path}: not an otface training checkpoint (no {', '.join(map(repr, missing))} entry)")


def is_state_dict(loaded: dict[str, Any]) -> bool:
    """Whether a loaded file is a bare state dict: tensors by parameter name, nothing else."""
    return bool(loaded) and all(isinstance(key, str) and torch.is_tensor(value) for key, value in loaded.items())


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(backbone state, head state or None) of an otface training checkpoint, or of a bare
    backbone state dict (insightface's model-zoo ``backbone.pth``; a ``module.`` prefix of
    DataParallel is dropped). Read with ``weights_only=True``; anything else is a
    :class:`ModelFileError` naming the file."""
    path = Path(path)
    if path.suffix == ".onnx":
        raise ModelFileError(f"{path}: an ONNX model holds no weights otface trains from; give the otface "
                             "checkpoint or the backbone state dict it was exported from")
    loaded = load_checkpoint(path)
    if "backbone" in loaded and "config" in loaded:
        return loaded["backbone"], loaded.get("head")
    if is_state_dict(loaded):
        if all(key.startswith("module.") for key in loaded):
            loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
        return loaded, None
    raise ModelFileError(f"{path}: neither an otface checkpoint nor a state dict of tensors")
