import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from otface.data.formats.recordio import (
    MAGIC,
    RecordIOError,
    RecordReader,
    RecordWriter,
    encode_record,
    pack_record,
    read_property,
    unpack_record,
    write_face_dataset,
)


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(buf, "PNG")
    return buf.getvalue()


def _write(tmp_path, payloads):
    rec, idx = tmp_path / "x.rec", tmp_path / "x.idx"
    with RecordWriter(rec, idx) as w:
        for key, payload in payloads.items():
            w.write(key, payload)
    return rec, idx


def test_pack_record_matches_mxnet_header_layout():
    assert pack_record(3.0, b"img", id=7, id2=9) == struct.pack("<IfQQ", 0, 3.0, 7, 9) + b"img"
    packed = pack_record([1.0, 2.5], b"xy")
    assert packed == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 1.0, 2.5) + b"xy"
    header, image = unpack_record(packed)
    assert header.flag == 2 and image == b"xy"
    np.testing.assert_array_equal(header.label, [1.0, 2.5])
    header, image = unpack_record(pack_record(5, b"", id=3))
    assert (header.flag, header.label, header.id, image) == (0, 5.0, 3, b"")


def test_unpack_rejects_short_payloads():
    with pytest.raises(RecordIOError, match="shorter"):
        unpack_record(b"\0" * 10)
    with pytest.raises(RecordIOError, match="3 labels"):
        unpack_record(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def test_rec_and_idx_bytes_match_a_hand_built_file(tmp_path):
    p0, p1 = pack_record(1.0, b"abcde"), pack_record(2.0, b"12345678")
    rec, idx = _write(tmp_path, {0: p0, 1: p1})
    expected = (struct.pack("<II", MAGIC, len(p0)) + p0 + b"\0" * (-len(p0) % 4)
                + struct.pack("<II", MAGIC, len(p1)) + p1)
    assert len(p0) % 4 == 1 and len(p1) % 4 == 0
    assert rec.read_bytes() == expected
    assert idx.read_text() == f"0\t0\n1\t{8 + len(p0) + 3}\n"
    reader = RecordReader(rec, idx)
    assert reader.keys == [0, 1] and reader.read(1) == p1 and reader.read(0) == p0
    assert reader.read_header(1).label == 2.0


def test_payload_holding_the_magic_word_is_split_into_parts(tmp_path):
    magic = struct.pack("<I", MAGIC)
    # the magic word at offset 8 (aligned: split there) and at offset 14 (unaligned: plain data)
    payload = b"A" * 8 + magic + b"B" * 2 + magic + b"C"
    first = struct.pack("<II", MAGIC, (1 << 29) | 8) + b"A" * 8
    last_data = b"B" * 2 + magic + b"C"
    last = struct.pack("<II", MAGIC, (3 << 29) | len(last_data)) + last_data + b"\0" * (-len(last_data) % 4)
    assert encode_record(payload) == first + last
    rec, idx = _write(tmp_path, {5: payload, 6: b"tail"})
    reader = RecordReader(rec, idx)
    assert reader.read(5) == payload and reader.read(6) == b"tail"


def test_reader_survives_pickling(tmp_path):
    rec, idx = _write(tmp_path, {0: pack_record(0.0, b"a"), 1: pack_record(1.0, b"b")})
    reader = RecordReader(rec, idx)
    reader.read(0)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(1) == reader.read(1)


def test_truncated_record_names_file_and_key(tmp_path):
    rec, idx = _write(tmp_path, {0: pack_record(0.0, b"a" * 40), 1: pack_record(1.0, b"b" * 40)})
    data = rec.read_bytes()
    rec.write_bytes(data[:-10])
    reader = RecordReader(rec, idx)
    assert reader.read(0)
    with pytest.raises(RecordIOError, match=r"x\.rec: record 1 at offset \d+: truncated"):
        reader.read(1)


def test_wrong_magic_names_file_and_key(tmp_path):
    rec, idx = _write(tmp_path, {0: pack_record(0.0, b"a" * 8), 1: pack_record(1.0, b"b")})
    data = bytearray(rec.read_bytes())
    offset = int(idx.read_text().splitlines()[1].split("\t")[1])
    data[offset] ^= 0xFF
    rec.write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match=rf"x\.rec: record 1 at offset {offset}: wrong magic"):
        RecordReader(rec, idx).read(1)


def test_idx_offset_beyond_file(tmp_path):
    rec, idx = _write(tmp_path, {0: pack_record(0.0, b"a")})
    idx.write_text(idx.read_text() + "1\t4096\n")
    with pytest.raises(RecordIOError, match=r"x\.idx: key 1 points at offset 4096, beyond the end"):
        RecordReader(rec, idx)


def test_idx_not_matching_rec(tmp_path):
    rec, idx = _write(tmp_path, {0: pack_record(0.0, b"a" * 16), 1: pack_record(1.0, b"b")})
    idx.write_text("0\t0\n1\t12\n")  # inside record 0
    with pytest.raises(RecordIOError, match=r"record 1 at offset 12: wrong magic.*x\.idx does not match"):
        RecordReader(rec, idx).read(1)


def test_malformed_idx_line(tmp_path):
    rec, idx = _write(tmp_path, {0: pack_record(0.0, b"a")})
    idx.write_text("0 0\n")
    with pytest.raises(RecordIOError, match=r"x\.idx:1: expected"):
        RecordReader(rec, idx)


def test_write_face_dataset_insightface_layout(tmp_path):
    labels = [2, 2, 0, 1, 1, 1]  # contiguous runs, any order
    samples = [(_png(10 * i), label) for i, label in enumerate(labels)]
    n = write_face_dataset(tmp_path, samples, num_classes=4, image_size=(8, 8))
    assert n == 6
    assert (tmp_path / "property").read_text().strip() == "4,8,8"
    assert read_property(tmp_path) == (4, 8, 8)
    reader = RecordReader(tmp_path / "train.rec", tmp_path / "train.idx")
    assert reader.keys == list(range(0, 1 + 6 + 4))
    head = reader.read(0)
    assert head == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 7.0, 11.0)
    for key, (image, label) in enumerate(samples, 1):
        header, data = unpack_record(reader.read(key))
        assert (header.flag, header.label, data) == (0, float(label), image)
    # identity records: label c owns image keys [start, end); label 3 has none
    ranges = {c: tuple(reader.read_header(7 + c).label) for c in range(4)}
    assert ranges == {0: (3.0, 4.0), 1: (4.0, 7.0), 2: (1.0, 3.0), 3: (7.0, 7.0)}


def test_write_face_dataset_rejects_bad_labels_and_sizes(tmp_path):
    with pytest.raises(RecordIOError, match="sample 2: the images of label 0 are not contiguous"):
        write_face_dataset(tmp_path, [(_png(1), 0), (_png(2), 1), (_png(3), 0)], num_classes=2, image_size=(8, 8))
    with pytest.raises(RecordIOError, match=r"sample 1: label 5 outside \[0, 2\)"):
        write_face_dataset(tmp_path, [(_png(1), 0), (_png(2), 5)], num_classes=2, image_size=(8, 8))
    with pytest.raises(RecordIOError, match="sample 0: image is 8x8, expected 112x112"):
        write_face_dataset(tmp_path, [(_png(1), 0)], num_classes=1)


def test_read_property_errors(tmp_path):
    with pytest.raises(RecordIOError, match="missing property file"):
        read_property(tmp_path)
    (tmp_path / "property").write_text("ten,112,112")
    with pytest.raises(RecordIOError, match="expected 'num_classes,height,width'"):
        read_property(tmp_path)
