"""The errors a user can cause, as types of their own.

An :class:`OtfaceError` is a user's mistake or bad input -- a config key, a command-line value, a
data or model file -- and its message names what is wrong: the key, or the file and the record or
line. The command line prints it on one line and exits with code 2. Every other exception is a
bug and keeps its traceback: code catches these types, never a broad ``ValueError`` or
``Exception``, so that a programming error is not mistaken for bad data.

The built-in base of each type (``ValueError``, ``FileNotFoundError``, ``RuntimeError``) is kept
so that callers of the library can catch them as before.
"""

from __future__ import annotations


class OtfaceError(Exception):
    """A user's mistake or bad input; the message says what and where, on one line."""


class ConfigError(OtfaceError, ValueError):
    """A configuration file, key, value or command-line argument is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A head, loss or backbone name that is not registered."""

    __str__ = BaseException.__str__  # KeyError's would quote the message


class UnknownParameterError(ConfigError, TypeError):
    """A hyper-parameter that the named head, loss or backbone does not take."""


class DataError(OtfaceError, ValueError):
    """A data file is malformed, damaged or inconsistent: an image, a record, a list, a pair set.

    The one kind of error that ``on_error='skip'`` may skip: readers raise it for a bad file or
    record and nothing else.
    """


class ModelFileError(OtfaceError, ValueError):
    """A checkpoint or model file is unreadable, refused as unsafe, or not what was expected."""


class InputNotFoundError(OtfaceError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class RunError(OtfaceError, RuntimeError):
    """A run cannot go on: it diverged, skipped too much data, trained nothing, or its folder is
    in use or cannot be written."""


def one_line(message: str) -> str:
    """``message`` with its line breaks folded into " | " (for errors that quote other errors)."""
    return " | ".join(part.strip() for part in message.strip().splitlines() if part.strip())
