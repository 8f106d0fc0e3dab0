import io
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from otface.data.binset import load_verification_set, read_bin, write_bin


def _jpeg(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, 40, 200 - value)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _py2_string(data: bytes) -> bytes:
    """A Python 2 ``str`` in pickle protocol 2: SHORT_BINSTRING or BINSTRING."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<I", len(data)) + data


def _py2_uint8_array(data: bytes) -> bytes:
    """A 1-d uint8 numpy array as Python 2 numpy pickled it (protocol 2)."""
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R("
            b"K\x01" + b"J" + struct.pack("<i", len(data)) + b"\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _py2_string(data) + b"tb")


def test_round_trip(tmp_path):
    images = [_jpeg(v) for v in (10, 20, 30, 40)]
    path = tmp_path / "s.bin"
    write_bin(path, images, [True, False])
    got, issame = read_bin(path)
    assert got == images
    assert issame.dtype == bool and issame.tolist() == [True, False]
    with open(path, "rb") as f:  # readable the way insightface reads it
        raw_images, raw_issame = pickle.load(f, encoding="bytes")
    assert raw_images == images and raw_issame == [True, False]


def test_reads_python2_pickles_with_str_and_ndarray_images(tmp_path):
    a, b = _jpeg(50), _jpeg(60)
    body = b"\x80\x02(]" + b"(" + _py2_string(a) + _py2_uint8_array(b) + b"e]" + b"(\x88e" + b"t."
    path = tmp_path / "py2.bin"
    path.write_bytes(body)
    images, issame = read_bin(path)
    assert images == [a, b] and issame.tolist() == [True]


def test_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(([], []))[:2] + (
        b"cos\nsystem\n(V touch " + str(marker).encode() + b"\ntR."
    )
    path = tmp_path / "evil.bin"
    path.write_bytes(evil)
    with pytest.raises(ValueError, match=r"evil\.bin.*os\.system is not allowed"):
        read_bin(path)
    assert not marker.exists()


def test_load_verification_set_decodes_all_images(tmp_path):
    values = [10, 70, 130, 190]
    images = [_jpeg(v) for v in values]
    path = tmp_path / "s.bin"
    write_bin(path, images, [False, True])
    x, issame = load_verification_set(path, image_size=(16, 16))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8
    for i, data in enumerate(images):
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
        np.testing.assert_array_equal(x[i].numpy(), expected)
    assert issame.tolist() == [False, True]


def test_corrupt_image_is_named(tmp_path):
    images = [_jpeg(10), _jpeg(20), _jpeg(30)[:40], _jpeg(40)]
    path = tmp_path / "bad.bin"
    write_bin(path, images, [True, False])
    with pytest.raises(ValueError, match=r"bad\.bin: image 2 \(pair 1\): cannot decode"):
        load_verification_set(path, image_size=(16, 16))


def test_wrong_image_size_is_named(tmp_path):
    path = tmp_path / "size.bin"
    write_bin(path, [_jpeg(10), _jpeg(20, size=20)], [True])
    with pytest.raises(ValueError, match=r"size\.bin: image 1 \(pair 0\) is 20x20, expected 16x16"):
        load_verification_set(path, image_size=(16, 16))


def test_image_count_must_be_twice_the_pairs(tmp_path):
    path = tmp_path / "count.bin"
    with pytest.raises(ValueError, match="3 images for 2 pairs"):
        write_bin(path, [_jpeg(1)] * 3, [True, False])
    with open(path, "wb") as f:
        pickle.dump(([_jpeg(1)] * 3, [True, False]), f)
    with pytest.raises(ValueError, match=r"count\.bin: 3 images for 2 pairs"):
        read_bin(path)
    with open(path, "wb") as f:
        pickle.dump(([_jpeg(1)] * 2, [True, False]), f)
    with pytest.raises(ValueError, match=r"count\.bin: 2 images for 2 pairs"):
        read_bin(path)
