"""insightface / MXNet RecordIO, read and written without mxnet.

Byte layout of a ``.rec`` file (little endian), as written by dmlc-core's ``RecordIOWriter``:

- a record is ``uint32 magic 0xced7230a``, ``uint32 lrec``, the data, zero padding to a multiple of
  4 bytes. ``lrec`` holds a continuation flag in its upper 3 bits (``cflag``) and the data length
  in its lower 29 bits.
- a payload that contains the magic word at a 4-byte aligned position is split there into parts
  (cflag 1 = first, 2 = middle, 3 = last; 0 = the whole payload in one part); the magic words at
  the split points are not stored and are put back by the reader.

A payload (``mx.recordio.pack``) is the header ``struct <IfQQ`` = (flag, label, id, id2), then,
when ``flag > 0``, ``flag`` float32 labels (and the header's ``label`` field is 0), then the
encoded image. The ``.idx`` file is text, one ``key<TAB>offset`` line per record.

insightface face data sets (``train.rec``/``train.idx``/``property``) hold, for N images of C
identities:

- record 0: header only, flag 2, labels ``(N + 1, N + 1 + C)``: images are the keys
  ``range(1, N + 1)``, identity records the keys ``range(N + 1, N + 1 + C)``;
- records 1..N: one image each, flag 0, label = the identity (a float holding an integer);
- records N+1..N+C: header only, flag 2, labels ``(start, end)``: the image keys of identity c;
- ``property``: the text ``num_classes,height,width``.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from otface.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
_HEADER = struct.Struct("<IfQQ")
_RECORD_HEAD = struct.Struct("<II")
# float32 represents every integer up to 2**24 exactly; record-0 and identity labels hold keys.
_MAX_EXACT_FLOAT32 = 1 << 24


class RecordIOError(DataError):
    """A RecordIO file, its index or a face data set folder is malformed."""


@dataclass(frozen=True)
class RecordHeader:
    """The header of a payload.

    ``label`` is a float when ``flag == 0`` and a float32 array of ``flag`` values otherwise.
    """

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_record(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Build a payload: header, optional float32 labels, then ``image`` (any bytes).

    A scalar ``label`` is stored in the header (flag 0); a sequence of labels is stored after the
    header as float32 with flag = its length (the header's label field is then 0), as
    ``mx.recordio.pack`` does.
    """
    if np.ndim(label) == 0:
        return _HEADER.pack(0, float(label), id, id2) + bytes(image)
    labels = np.asarray(label, dtype="<f4").ravel()
    if labels.size == 0:
        raise RecordIOError("pack_record: an empty label sequence cannot be stored")
    return _HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + bytes(image)


def unpack_record(payload: bytes) -> tuple[RecordHeader, bytes]:
    """Split a payload into its header and the remaining (image) bytes."""
    if len(payload) < _HEADER.size:
        raise RecordIOError(f"payload of {len(payload)} bytes is shorter than the {_HEADER.size}-byte header")
    flag, label, id_, id2 = _HEADER.unpack_from(payload)
    start = _HEADER.size
    if flag == 0:
        return RecordHeader(0, label, id_, id2), bytes(payload[start:])
    end = start + 4 * flag
    if len(payload) < end:
        raise RecordIOError(
            f"payload header announces {flag} labels but holds only {len(payload) - start} bytes after it"
        )
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=start).astype(np.float32)
    return RecordHeader(flag, labels, id_, id2), bytes(payload[end:])


def encode_record(payload: bytes) -> bytes:
    """The bytes of one record in a ``.rec`` file (magic, length word, data, padding), split into
    continuation parts wherever the payload holds the magic word at a 4-byte aligned position."""
    if len(payload) > _MAX_LENGTH:
        raise RecordIOError(f"payload of {len(payload)} bytes exceeds the RecordIO limit of {_MAX_LENGTH}")
    parts = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            cflag = 1 if start == 0 else 2
            parts.append(_RECORD_HEAD.pack(MAGIC, (cflag << _LENGTH_BITS) | (pos - start)))
            parts.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    cflag = 3 if start > 0 else 0
    parts.append(_RECORD_HEAD.pack(MAGIC, (cflag << _LENGTH_BITS) | (len(payload) - start)))
    parts.append(payload[start:])
    parts.append(b"\0" * (-len(payload) % 4))
    return b"".join(parts)


class RecordWriter:
    """Writes a ``.rec`` file and its ``.idx`` index; use as a context manager.

    Keys are integers, each written once; the index lists them in write order.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")
        self._keys: set[int] = set()

    def write(self, key: int, payload: bytes) -> int:
        """Append a record under ``key``; return its byte offset in the ``.rec`` file."""
        if key in self._keys:
            raise RecordIOError(f"{self.rec_path}: key {key} written twice")
        offset = self._rec.tell()
        self._rec.write(encode_record(payload))
        self._idx.write(f"{int(key)}\t{offset}\n")
        self._keys.add(key)
        return offset

    def close(self) -> None:
        """Flush and close both files."""
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_index(idx_path: str | os.PathLike) -> dict[int, int]:
    """Parse a ``.idx`` file into {key: byte offset}, in file order. A key listed twice, or two
    keys at one offset (one record read twice), is a :class:`RecordIOError` naming both lines."""
    index: dict[int, int] = {}
    at: dict[int, tuple[int, int]] = {}  # offset -> (key, line)
    with open(idx_path, "r", encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (IndexError, ValueError):
                got = line.strip()
                raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {got!r}") from None
            if key in index:
                raise RecordIOError(f"{idx_path}:{lineno}: key {key} listed twice")
            if offset in at:
                other, other_line = at[offset]
                raise RecordIOError(f"{idx_path}:{lineno}: key {key} points at offset {offset}, the record of key "
                                    f"{other} (line {other_line}): one record would be read as two")
            index[key] = offset
            at[offset] = (key, lineno)
    return index


class RecordReader:
    """Random access to the records of a ``.rec`` file through its ``.idx`` index.

    Every offset of the index is checked against the file size at construction unless
    ``check_offsets`` is false (then a record beyond the end is an error when it is read).

    The ``.rec`` file is memory-mapped lazily, once per process (a reader created before a
    ``fork`` reopens it in the child), so one reader can serve threads and DataLoader workers; the
    reader pickles without its mapping.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike, check_offsets: bool = True) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise RecordIOError(f"{path}: file not found")
        self._index = read_index(self.idx_path)
        self.size = self.rec_path.stat().st_size
        for key, offset in self._index.items() if check_offsets else ():
            if not 0 <= offset <= self.size - _RECORD_HEAD.size:
                raise RecordIOError(
                    f"{self.idx_path}: key {key} points at offset {offset}, beyond the end of "
                    f"{self.rec_path} ({self.size} bytes)"
                )
        self._pid: int | None = None
        self._map: mmap.mmap | bytes | None = None

    @property
    def keys(self) -> list[int]:
        """The record keys, in index order."""
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: int) -> bool:
        return key in self._index

    def offset(self, key: int) -> int:
        """Byte offset of record ``key`` in the ``.rec`` file."""
        try:
            return self._index[key]
        except KeyError:
            raise RecordIOError(f"{self.idx_path}: no record with key {key}") from None

    def _data(self) -> mmap.mmap | bytes:
        if self._pid != os.getpid() or self._map is None:
            with open(self.rec_path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
            self._pid = os.getpid()
        return self._map

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (continuation parts joined)."""
        return self.read_at(self.offset(key), key)

    def read_header(self, key: int) -> RecordHeader:
        """The header of record ``key``'s payload, read without copying the image bytes."""
        offset = self.offset(key)
        data = self._data()
        cflag, length = self._record_head(data, offset, offset, key)
        if cflag != 0:
            payload = self.read_at(offset, key)
        else:
            self._check_body(offset, offset, length, key)
            flag = struct.unpack_from("<I", data, offset + 8)[0] if length >= 4 else 0
            payload = data[offset + 8 : offset + 8 + min(length, _HEADER.size + 4 * flag)]
        try:
            return unpack_record(payload)[0]
        except RecordIOError as exc:
            raise RecordIOError(f"{self._where(offset, key)}: {exc}") from None

    def read_at(self, offset: int, key: int | None = None) -> bytes:
        """The payload of the record starting at byte ``offset`` (``key`` only names it in errors)."""
        data = self._data()
        out = io.BytesIO()
        pos = offset
        while True:
            cflag, length = self._record_head(data, offset, pos, key)
            if cflag not in ((0, 1) if pos == offset else (2, 3)):
                where = self._where(offset, key)
                raise RecordIOError(f"{where}: unexpected continuation flag {cflag} at offset {pos}")
            self._check_body(offset, pos, length, key)
            out.write(data[pos + 8 : pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return out.getvalue()
            out.write(_MAGIC_BYTES)

    def _where(self, offset: int, key: int | None) -> str:
        name = f"record {key} at offset {offset}" if key is not None else f"record at offset {offset}"
        return f"{self.rec_path}: {name}"

    def _record_head(self, data: mmap.mmap | bytes, offset: int, pos: int, key: int | None) -> tuple[int, int]:
        """(cflag, length) of the part at ``pos`` of the record starting at ``offset``."""
        if pos + _RECORD_HEAD.size > self.size:
            raise RecordIOError(f"{self._where(offset, key)}: truncated record (the file ends at {self.size})")
        magic, lrec = _RECORD_HEAD.unpack_from(data, pos)
        if magic != MAGIC:
            raise RecordIOError(
                f"{self._where(offset, key)}: wrong magic 0x{magic:08x} at offset {pos} (expected "
                f"0x{MAGIC:08x}): the file is corrupt or {self.idx_path} does not match it"
            )
        return lrec >> _LENGTH_BITS, lrec & _MAX_LENGTH

    def _check_body(self, offset: int, pos: int, length: int, key: int | None) -> None:
        if pos + 8 + length > self.size:
            raise RecordIOError(
                f"{self._where(offset, key)}: truncated record ({length} bytes announced at offset "
                f"{pos}, {self.size - pos - 8} left in the file)"
            )

    def close(self) -> None:
        """Release the memory map (it is reopened on the next read)."""
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._map = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_map"] = None
        state["_pid"] = None
        return state


def read_property(root: str | os.PathLike) -> tuple[int, int, int]:
    """Read ``root/property`` ("num_classes,height,width") as (num_classes, height, width)."""
    path = Path(root) / "property"
    if not path.is_file():
        raise RecordIOError(f"{path}: missing property file (expected the text 'num_classes,height,width')")
    text = path.read_text(encoding="ascii").strip()
    try:
        num_classes, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise RecordIOError(f"{path}: expected 'num_classes,height,width', got {text!r}") from None
    if num_classes < 1 or h < 1 or w < 1:
        raise RecordIOError(f"{path}: values must be positive, got {text!r}")
    return num_classes, h, w


def write_face_dataset(
    root: str | os.PathLike,
    samples: Iterable[tuple[bytes, int]],
    num_classes: int,
    image_size: tuple[int, int] = (112, 112),
    rec_name: str = "train.rec",
    idx_name: str = "train.idx",
    property_name: str = "property",
) -> int:
    """Write ``samples`` (encoded image, label) as an insightface face data set; return N.

    The images of each label must come in one contiguous run (any label order); labels lie in
    [0, num_classes). ``image_size`` is (height, width) for the property file; every image's size
    is checked against it from its header. A label without images gets the empty key range
    (N+1, N+1). Other file names let callers write to temporary names and rename atomically.
    """
    root = Path(root)
    rec_path, idx_path = root / rec_name, root / idx_name
    height, width = image_size
    ranges: dict[int, tuple[int, int]] = {}
    key = 0
    with RecordWriter(rec_path, idx_path) as writer:
        writer.write(0, pack_record([0.0, 0.0], b""))  # placeholder, rewritten below
        current = None
        for key, (image, label) in enumerate(samples, 1):
            if not 0 <= label < num_classes:
                raise RecordIOError(f"{rec_path}: sample {key - 1}: label {label} outside [0, {num_classes})")
            if label != int(label):
                raise RecordIOError(f"{rec_path}: sample {key - 1}: label {label} is not an integer")
            label = int(label)
            if label != current:
                if label in ranges:
                    raise RecordIOError(
                        f"{rec_path}: sample {key - 1}: the images of label {label} are not contiguous"
                    )
                if current is not None:
                    ranges[current] = (ranges[current][0], key)
                ranges[label] = (key, key)
                current = label
            try:
                size = Image.open(io.BytesIO(image)).size
            except Exception as exc:
                raise RecordIOError(f"{rec_path}: sample {key - 1}: not a readable image ({exc})") from None
            if size != (width, height):
                raise RecordIOError(
                    f"{rec_path}: sample {key - 1}: image is {size[0]}x{size[1]}, expected {width}x{height}"
                )
            writer.write(key, pack_record(float(label), image, id=key))
        if current is not None:
            ranges[current] = (ranges[current][0], key + 1)
        n = key
        if n + 1 + num_classes > _MAX_EXACT_FLOAT32:
            raise RecordIOError(f"{rec_path}: {n} images + {num_classes} identities exceed the float32 key range")
        for c in range(num_classes):
            start, end = ranges.get(c, (n + 1, n + 1))
            writer.write(n + 1 + c, pack_record([float(start), float(end)], b""))
    head = encode_record(pack_record([float(n + 1), float(n + 1 + num_classes)], b""))
    with open(rec_path, "r+b") as f:
        f.write(head)  # same length as the placeholder: header + two float32
    (root / property_name).write_text(f"{num_classes},{height},{width}\n", encoding="ascii")
    return n
