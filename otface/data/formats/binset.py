"""insightface verification sets (``lfw.bin``, ``cfp_fp.bin``, ...).

A ``.bin`` file is a pickle of ``(images, issame)``: ``images`` a list of 2P encoded images
(bytes, or 1-d uint8 numpy arrays holding the encoded bytes), ``issame`` a list of P bools; images
2i and 2i+1 form pair i. insightface's published files were written by Python 2, so they are
read with ``encoding="bytes"``.

Unpickling is restricted: only plain containers, bytes, bools, numbers and numpy arrays/scalars of
simple dtypes can be built, and numpy never sees what the file says before it is checked (numpy's
own unpickling trusts it: a crafted dtype state crashes the interpreter), so a malicious ``.bin``
can neither run code nor crash the process; the loaded structure is then checked.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from otface.data.transforms import decode_image, to_chw
from otface.errors import DataError, InputNotFoundError, one_line

# --- restricted unpickling -------------------------------------------------------------------
#
# ``find_class`` never hands out numpy itself: numpy's ``__setstate__`` methods and ``_reconstruct``
# trust their arguments (a bogus dtype or array state crashes the interpreter), so each allowed
# numpy name maps to a stand-in of ours that only records what the pickle passes it. After
# ``load()``, ``_Builder`` checks each record (a dtype from a short allow-list, a shape that matches
# the raw data) and builds the real value with ``np.frombuffer``; nothing from the file reaches a
# numpy constructor unchecked, and no object dtype is ever built.

_ONE_BYTE = {"b1": "?", "i1": "i1", "u1": "u1"}  # numpy's pickled dtype name -> our dtype string
_DTYPES = {**_ONE_BYTE, "i2": "i2", "u2": "u2", "i4": "i4", "u4": "u4", "i8": "i8", "u8": "u8",
           "f2": "f2", "f4": "f4", "f8": "f8"}
_BYTE_ORDERS = ("|", "<", ">", "=")
_MAX_NDIM = 32
_MAX_DEPTH = 16  # a real set nests 3 deep: (images, issame) -> list -> item
_IMAGE_DTYPES = (np.uint8, np.int8)


class _Shim:
    """Base of the stand-ins for numpy names: plain objects, not types (so pickle's NEWOBJ refuses
    them), without a ``__dict__``, and refusing pickle's BUILD (which would otherwise set
    attributes on them)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError(f"cannot set the state of {self.name}")

    def __repr__(self) -> str:
        return self.name


class _Recorder(_Shim):
    """Stands in for a numpy callable: calling it makes a ``_Record`` of the arguments."""

    __slots__ = ()

    def __call__(self, *args: object) -> "_Record":
        return _Record(self.name, args)


class _Encode(_Shim):
    """``_codecs.encode(text, "latin1")``: how Python 3 writes ``bytes`` in pickle protocol 2."""

    __slots__ = ()

    def __call__(self, *args: object) -> bytes:
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(str, 'latin1')")
        return args[0].encode("latin-1")


class _Bytes(_Shim):
    """``bytes()``, ``bytearray()`` or ``bytearray(data)``: how Python 3 writes an empty ``bytes``
    (protocol 2) and a ``bytearray`` (protocols 2-4)."""

    __slots__ = ()

    def __call__(self, *args: object) -> bytes | bytearray:
        make = bytearray if self.name.endswith("bytearray") else bytes
        if args and (len(args) != 1 or type(args[0]) is not bytes):
            raise pickle.UnpicklingError(f"{self.name} is allowed only with no argument or a bytes")
        return make(*args)


class _Record:
    """What the pickle asked of a numpy stand-in: the call's arguments and, for a dtype or an
    ``_reconstruct``-ed array, the one state that pickle's BUILD gives it."""

    __slots__ = ("kind", "args", "state", "has_state")

    def __init__(self, kind: str, args: tuple) -> None:
        self.kind, self.args, self.state, self.has_state = kind, args, None, False

    def __setstate__(self, state: object) -> None:
        if self.kind not in ("numpy.dtype", "_reconstruct") or self.has_state:
            raise pickle.UnpicklingError(f"unexpected state for {self.kind}")
        self.state, self.has_state = state, True


_NDARRAY = _Shim("numpy.ndarray")  # only ever an argument of _reconstruct
_ALLOWED: dict[tuple[str, str], _Shim] = {("numpy", "ndarray"): _NDARRAY,
                                          ("numpy", "dtype"): _Recorder("numpy.dtype"),
                                          ("_codecs", "encode"): _Encode("_codecs.encode")}
for _builtins in ("builtins", "__builtin__"):
    _ALLOWED[(_builtins, "bytes")] = _Bytes(f"{_builtins}.bytes")
    _ALLOWED[(_builtins, "bytearray")] = _Bytes(f"{_builtins}.bytearray")
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _Recorder("_reconstruct")
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _Recorder("scalar")
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _Recorder("_frombuffer")  # protocol 5


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only builtin values and records of numpy calls; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a .bin file") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed in a .bin file")


def _text(value: object) -> str | None:
    """A pickled string as ``str`` (Python 2 strings are read as ``bytes``); None if not one."""
    if type(value) is str:
        return value
    if type(value) is bytes and value.isascii():
        return value.decode("ascii")
    return None


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_flag(value: object) -> bool:
    return type(value) in (bool, int) and value in (0, 1)


class _Builder:
    """Turns the unpickled structure into plain values, building each ``_Record`` after checks.

    Lists and tuples are rebuilt (shared and self-containing ones included: ``memo`` keeps
    identities), other builtin values are kept, and the numpy data built may not exceed the file's
    size (pickle's memo could otherwise make many arrays from one buffer).
    """

    def __init__(self, path: Path, budget: int) -> None:
        self.path, self.budget, self.memo = path, budget, {}

    def fail(self, message: str) -> DataError:
        return DataError(f"{self.path}: {message}")

    def value(self, obj: object, depth: int = 0) -> object:
        if type(obj) not in (list, tuple, _Record):
            return obj  # bytes, numbers, ... as they are; read_bin refuses what it cannot use
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        if depth > _MAX_DEPTH:
            raise self.fail(f"the pickle nests more than {_MAX_DEPTH} levels deep")
        if type(obj) is list:
            out = self.memo[id(obj)] = []
            out.extend(self.value(item, depth + 1) for item in obj)
            return out
        if type(obj) is tuple:
            built = tuple(self.value(item, depth + 1) for item in obj)
        elif obj.kind == "numpy.dtype":
            built = self.dtype(obj)
        elif obj.kind == "_reconstruct":
            built = self.reconstruct(obj)
        elif obj.kind == "_frombuffer":
            built = self.frombuffer(obj)
        else:
            built = self.scalar(obj)
        return self.memo.setdefault(id(obj), built)

    def dtype(self, rec: object) -> np.dtype:
        """``numpy.dtype(name, align, copy)`` with state ``(3, byteorder, None, None, None,
        elsize, alignment, flags)`` (version 4 adds metadata, ignored); simple dtypes only."""
        if type(rec) is not _Record or rec.kind != "numpy.dtype":
            got = rec.kind if type(rec) is _Record else type(rec).__name__
            raise self.fail(f"expected a numpy dtype, got {got}")
        if id(rec) in self.memo:
            return self.memo[id(rec)]
        args = rec.args
        name = _text(args[0]) if args else None
        if len(args) != 3 or name is None or not (_is_flag(args[1]) and _is_flag(args[2])):
            raise self.fail("malformed numpy dtype in the pickle")
        if name not in _DTYPES:
            raise self.fail(f"numpy dtype {name[:20]!r} is not allowed in a .bin file "
                            f"(only {', '.join(_DTYPES)})")
        order = "|" if name in _ONE_BYTE else "="
        if rec.has_state:
            state = rec.state
            if type(state) is not tuple or len(state) not in (8, 9) or state[0] != len(state) - 5:
                raise self.fail(f"malformed state of numpy dtype {name}")
            order = _text(state[1])
            _, _, subarray, names, fields, elsize, alignment, flags = state[:8]
            metadata = state[8] if len(state) == 9 else None
            if (order not in _BYTE_ORDERS or (order == "|" and name not in _ONE_BYTE)
                    or not (subarray is None and names is None and fields is None)
                    or not all(_is_int(v) for v in (elsize, alignment, flags))
                    or not (metadata is None or type(metadata) is dict)):
                raise self.fail(f"malformed state of numpy dtype {name}")
        dtype = np.dtype(_DTYPES[name] if order == "|" else order + _DTYPES[name])
        return self.memo.setdefault(id(rec), dtype)

    def data(self, raw: object, dtype: np.dtype, shape: tuple, order: str, what: str) -> np.ndarray:
        """The array of ``dtype`` and ``shape`` whose elements are ``raw`` in ``order``, a copy."""
        if type(raw) not in (bytes, bytearray):
            raise self.fail(f"{what}: data is a {type(raw).__name__}, not bytes")
        if (type(shape) is not tuple or len(shape) > _MAX_NDIM
                or not all(_is_int(n) and n >= 0 for n in shape)):
            raise self.fail(f"{what}: malformed shape")
        size = dtype.itemsize
        for n in shape:
            size *= n
        if size != len(raw):
            raise self.fail(f"{what}: shape {shape} of {dtype} needs {size} bytes, the pickle has {len(raw)}")
        if dtype == np.bool_ and raw.translate(None, b"\x00\x01"):
            raise self.fail(f"{what}: bool data that is not 0 or 1")
        self.budget -= len(raw)
        if self.budget < 0:
            raise self.fail("the pickle's numpy data is larger than the file (shared buffers)")
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy(order="K")

    def reconstruct(self, rec: _Record) -> np.ndarray:
        """``_reconstruct(ndarray, (0,), b"b")`` with state ``([1,] shape, dtype, is_fortran,
        raw bytes)``: how numpy pickles an array with protocols 0-4."""
        args, state = rec.args, rec.state
        if len(args) != 3 or args[0] is not _NDARRAY or args[1] != (0,) or _text(args[2]) != "b":
            raise self.fail("malformed numpy array in the pickle")
        if type(state) is tuple and len(state) == 5 and _is_int(state[0]) and state[0] == 1:
            state = state[1:]
        if not rec.has_state or type(state) is not tuple or len(state) != 4 or not _is_flag(state[2]):
            raise self.fail("malformed state of a numpy array in the pickle")
        shape, dtype, fortran, raw = state
        array = self.data(raw, self.dtype(dtype), shape, "F" if fortran else "C", "numpy array")
        if not array.dtype.isnative:  # as numpy does: byte-swapped on reading, native after
            array = array.astype(array.dtype.newbyteorder("="), order="K")
        return array

    def frombuffer(self, rec: _Record) -> np.ndarray:
        """``_frombuffer(buffer, dtype, shape, order)``: a contiguous array in protocol 5."""
        if len(rec.args) != 4 or _text(rec.args[3]) not in ("C", "F"):
            raise self.fail("malformed numpy array (protocol 5) in the pickle")
        raw, dtype, shape, order = rec.args
        return self.data(raw, self.dtype(dtype), shape, _text(order), "numpy array")

    def scalar(self, rec: _Record) -> np.generic:
        """``scalar(dtype, raw bytes)``: a numpy scalar such as ``np.bool_(True)``."""
        if len(rec.args) != 2:
            raise self.fail("malformed numpy scalar in the pickle")
        dtype, raw = rec.args
        return self.data(raw, self.dtype(dtype), (), "C", "numpy scalar")[()]


def _check_memo(content: bytes) -> None:
    """Refuse a memo index past the memo's end. CPython's unpickler grows its memo array to the
    index a PUT names, so one 5-byte ``LONG_BINPUT`` could make it allocate and zero gigabytes;
    picklers number memo entries 0, 1, 2... in order.

    What ``pickletools`` cannot parse is refused here too (``UnpicklingError``, or ``EOFError``
    when the data ends before STOP, as pickle says): the unpickler accepts a few things it does
    not (``I0x10``), and would then read on past what was checked.
    """
    size = 0
    ops = pickletools.genops(content)
    while True:
        try:
            opcode, arg, _ = next(ops)
        except StopIteration:
            return
        except ValueError as exc:  # genops' one error type for malformed data
            if str(exc) == "pickle exhausted before seeing STOP":
                raise EOFError("Ran out of input") from None
            raise pickle.UnpicklingError(str(exc)) from None
        if opcode.name == "MEMOIZE":
            size += 1
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if arg > size:
                raise pickle.UnpicklingError(f"memo index {arg} out of order (memo has {size} entries)")
            if arg == size:
                size += 1


def _unpickle(path: Path) -> object:
    """The pickled value in ``path``, built the restricted way (``DataError`` naming it if not)."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:  # from memory: a bogus length in the pickle cannot make a huge read
        _check_memo(content)
        data = _RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except Exception as exc:  # broad, these two calls only: garbage makes pickle raise many types
        raise DataError(f"{path}: not a readable verification .bin file ({type(exc).__name__}: "
                        f"{one_line(str(exc))})") from None
    return _Builder(path, len(content)).value(data)


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a verification set: 2P encoded images and P is-same flags (pairs consecutive)."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs (need 2 per pair)")
    data = ([bytes(b) for b in images], [bool(s) for s in issame])
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Read a verification set: (2P encoded images as bytes, is-same flags as a bool array (P,)).

    Raises ``InputNotFoundError`` when ``path`` does not exist and ``DataError`` naming it when it
    cannot be read or unpickled, or does not hold such a set.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: verification set not found")
    data = _unpickle(path)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(data).__name__}")
    raw_images, raw_issame = data
    if not isinstance(raw_images, (list, tuple)):
        raise DataError(f"{path}: images must be a list, got {type(raw_images).__name__}")
    images = []
    for i, item in enumerate(raw_images):
        if isinstance(item, np.ndarray) and item.ndim == 1 and item.dtype in _IMAGE_DTYPES:
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise DataError(f"{path}: image {i} is a {type(item).__name__}, not encoded image bytes")
        images.append(bytes(item))
    flat = isinstance(raw_issame, (list, tuple)) or (isinstance(raw_issame, np.ndarray) and raw_issame.ndim == 1)
    if not flat or not all(isinstance(s, (bool, int, np.bool_, np.integer)) and s in (0, 1) for s in raw_issame):
        raise DataError(f"{path}: issame must be a flat list of booleans")
    issame = np.array(raw_issame, dtype=bool)
    if not len(issame):
        raise DataError(f"{path}: holds no pairs")
    if len(images) % 2 or len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images for {len(issame)} pairs (need exactly 2 per pair)")
    return images, issame


def load_verification_set(
    path: str | os.PathLike, image_size: tuple[int, int] = (112, 112)
) -> tuple[torch.Tensor, np.ndarray]:
    """Read and decode a ``.bin`` set: (uint8 RGB images (2P, 3, H, W), is-same flags bool (P,)).

    ``image_size`` is (height, width); an image that does not decode or has another size is an
    error naming the file and the image index (``DataError``). Normalise with
    ``transforms.normalize``.
    """
    images, issame = read_bin(path)
    height, width = image_size
    out = torch.empty((len(images), 3, height, width), dtype=torch.uint8)
    for i, data in enumerate(images):
        try:
            image = decode_image(data)
        except DataError as exc:
            raise DataError(f"{path}: image {i} (pair {i // 2}): {exc}") from None
        if image.shape[:2] != (height, width):
            raise DataError(
                f"{path}: image {i} (pair {i // 2}) is {image.shape[1]}x{image.shape[0]}, "
                f"expected {width}x{height}"
            )
        out[i] = to_chw(image)
    return out, issame
