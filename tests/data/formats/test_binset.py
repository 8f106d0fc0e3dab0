import codecs
import io
import json
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otface.data.formats.binset import _unpickle, load_verification_set, read_bin, write_bin
from otface.errors import DataError, InputNotFoundError


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
    with pytest.raises(DataError, match=r"evil\.bin.*os\.system is not allowed"):
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
    with pytest.raises(DataError, match=r"bad\.bin: image 2 \(pair 1\): cannot decode"):
        load_verification_set(path, image_size=(16, 16))


def test_wrong_image_size_is_named(tmp_path):
    path = tmp_path / "size.bin"
    write_bin(path, [_jpeg(10), _jpeg(20, size=20)], [True])
    with pytest.raises(DataError, match=r"size\.bin: image 1 \(pair 0\) is 20x20, expected 16x16"):
        load_verification_set(path, image_size=(16, 16))


def test_image_count_must_be_twice_the_pairs(tmp_path):
    path = tmp_path / "count.bin"
    with pytest.raises(ValueError, match="3 images for 2 pairs"):
        write_bin(path, [_jpeg(1)] * 3, [True, False])
    with open(path, "wb") as f:
        pickle.dump(([_jpeg(1)] * 3, [True, False]), f)
    with pytest.raises(DataError, match=r"count\.bin: 3 images for 2 pairs"):
        read_bin(path)
    with open(path, "wb") as f:
        pickle.dump(([_jpeg(1)] * 2, [True, False]), f)
    with pytest.raises(DataError, match=r"count\.bin: 2 images for 2 pairs"):
        read_bin(path)


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"lfw\.bin: verification set not found"):
        read_bin(tmp_path / "lfw.bin")


@pytest.mark.parametrize("data, message", [
    (b"", r"not a readable verification \.bin file \(EOFError"),
    (pickle.dumps(([b"x", b"y"], [True]))[:-5], r"not a readable verification \.bin file"),
    (b"\x80\x04garbage", r"not a readable verification \.bin file \(UnpicklingError"),
    (pickle.dumps({"images": [], "issame": []}), r"expected a pickled \(images, issame\) pair, got dict"),
    (pickle.dumps((b"xy", [True])), r"images must be a list, got bytes"),
    (pickle.dumps(([b"x", 3], [True])), r"image 1 is a int, not encoded image bytes"),
    (pickle.dumps(([b"x", b"y"], [[True, False], [True]])), r"issame must be a flat list of booleans"),
    (pickle.dumps(([b"x", b"y"], [2])), r"issame must be a flat list of booleans"),
    (pickle.dumps(([b"x", b"y"], "1")), r"issame must be a flat list of booleans"),
    (pickle.dumps(([], [])), r"holds no pairs"),
])
def test_damaged_file_is_a_data_error_naming_it(tmp_path, data, message):
    path = tmp_path / "damaged.bin"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"damaged\.bin: " + message):
        read_bin(path)


# --- numpy values in the pickle: every legitimate form loads, nothing reaches numpy unchecked ----

_REPO = Path(__file__).resolve().parents[3]
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.bool_(True).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_U1_STATE = (3, "|", None, None, None, -1, -1, 0)
# the 99-byte file that segfaulted numpy's dtype.__setstate__ (a 6-tuple state) through the old reader
_CRASH = bytes.fromhex(
    "5d948c166e756d70792e5f636f72652e6d756c74696172726179948c0c5f7265636f6e73747275637494948c056e75"
    "6d7079948c076e64617272617968048c056474797065938c02753189888752284b038c014e4e4affffffff4affffff"
    "ff4b007462")


class _Reduce:
    """Pickles as the given ``__reduce__`` tuple: hand-made (possibly hostile) numpy calls. Only
    ever read back with ``read_bin``/``_unpickle``, never with ``pickle.loads``."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _array(shape, dtype, raw, fortran=False, version=True):
    state = (shape, dtype, fortran, raw)
    return _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, *state) if version else state)


def _dtype(name, state=_U1_STATE):
    return _Reduce(np.dtype, (name, False, True), state)


def _assert_same(got, want, where="value"):
    """``got`` is ``want``'s type with the same content (arrays: dtype, shape, layout-free bytes)."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert got.tobytes(order="A") == want.tobytes(order="A"), where
        assert got.flags.f_contiguous == want.flags.f_contiguous, where
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), where
    elif isinstance(want, np.dtype):
        assert got == want, where
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def _check_all_protocols(tmp_path, value, name="v"):
    """Pickle ``value`` with protocols 2-5; ``_unpickle`` gives what ``pickle.loads`` gives."""
    for protocol in (2, 3, 4, 5):
        blob = pickle.dumps(value, protocol=protocol)
        path = tmp_path / f"{name}{protocol}.bin"
        path.write_bytes(blob)
        _assert_same(_unpickle(path), pickle.loads(blob, encoding="bytes"), f"protocol {protocol}")  # trusted bytes
    return path


_NUMPY_VALUES = {
    "u1": np.frombuffer(b"\xff\xd8abc\x00", np.uint8),
    "i1": np.array([-3, 0, 7], np.int8),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 4), np.float32),
    "i2-3d": np.arange(24, dtype="<i2").reshape(2, 3, 4),
    "big-endian-i4": np.arange(6, dtype=">i4").reshape(2, 3),
    "fortran-i8": np.asfortranarray(np.arange(6, dtype="<i8").reshape(2, 3)),
    "strided-u8": np.arange(10, dtype="<u8")[::3],
    "f2-f4-f8": [np.array([1.5], "<f2"), np.linspace(0, 1, 5, dtype="<f4"), np.array([[np.pi]], ">f8")],
    "u2-u4": [np.array([65535], "<u2"), np.array([2**32 - 1], "<u4")],
    "scalars": [np.bool_(True), np.bool_(False), np.uint8(200), np.int64(-5), np.float32(0.25), np.float64(1e300)],
    "dtypes": [np.dtype("u1"), np.dtype(">f4"), np.dtype(bool)],
    "0-d": np.array(3.5),
    "shared": [np.arange(3, dtype=np.uint8)] * 3,
    "many-bools": [np.bool_(i % 3 == 0) for i in range(1000)],
    "bytes-and-bytearray": [b"", b"xyz", bytearray(), bytearray(b"ab\xff"), "text", 7, 2.5, None, True],
}


@pytest.mark.parametrize("name", list(_NUMPY_VALUES))
def test_numpy_values_load_as_pickle_loads_them(tmp_path, name):
    _check_all_protocols(tmp_path, _NUMPY_VALUES[name], name)


def test_shared_array_stays_one_object(tmp_path):
    a = np.arange(4, dtype=np.uint8)
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"s{protocol}.bin"
        path.write_bytes(pickle.dumps([a, a], protocol=protocol))
        got = _unpickle(path)
        assert got[0] is got[1] and got[0].flags.writeable


@pytest.mark.parametrize("issame", [
    [True, False], [np.bool_(True), np.bool_(False)], np.array([True, False]), np.array([1, 0], "<i8"),
    [np.int64(1), np.uint8(0)], (True, False),
])
@pytest.mark.parametrize("as_array", [False, True])
def test_numpy_images_and_flags_read_as_pickle_loads_them(tmp_path, issame, as_array):
    encoded = [_jpeg(v) for v in (10, 20, 30, 40)]
    images = [np.frombuffer(b, np.uint8) if as_array else b for b in encoded]
    for protocol in (2, 3, 4, 5):
        blob = pickle.dumps((images, issame), protocol=protocol)
        path = tmp_path / f"set{protocol}.bin"
        path.write_bytes(blob)
        want_images, want_issame = pickle.loads(blob, encoding="bytes")  # our own trusted bytes
        got_images, got_issame = read_bin(path)
        assert got_images == [bytes(w) if isinstance(w, bytes) else w.tobytes() for w in want_images] == encoded
        assert got_issame.dtype == bool and got_issame.tolist() == [bool(s) for s in want_issame] == [True, False]
        x, flags = load_verification_set(path, image_size=(16, 16))
        assert x.shape == (4, 3, 16, 16) and flags.tolist() == [True, False]


def test_bytearray_and_empty_images_read_with_every_protocol(tmp_path):
    a, b = _jpeg(50), _jpeg(60)
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"ba{protocol}.bin"
        path.write_bytes(pickle.dumps(([bytearray(a), b, b"", bytearray()], [True, False]), protocol=protocol))
        images, issame = read_bin(path)
        assert images == [a, b, b"", b""] and issame.tolist() == [True, False]


def test_reads_python2_numpy_bool_scalars(tmp_path):
    py2_bool = (b"cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02b1K\x00K\x01\x87R"
                b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU\x01\x01\x86R")
    a, b = _jpeg(50), _jpeg(60)
    body = b"\x80\x02(]" + b"(" + _py2_string(a) + _py2_uint8_array(b) + b"e]" + b"(" + py2_bool + b"e" + b"t."
    path = tmp_path / "py2.bin"
    path.write_bytes(body)
    images, issame = read_bin(path)
    assert images == [a, b] and issame.tolist() == [True]
    _assert_same(_unpickle(path), pickle.loads(body, encoding="bytes"))


def test_crafted_dtype_state_is_a_data_error_not_a_crash(tmp_path):
    path = tmp_path / "crash.bin"
    path.write_bytes(_CRASH)
    with pytest.raises(DataError, match=r"crash\.bin: not a readable verification \.bin file"):
        read_bin(path)  # the pickle has no STOP: load() runs out after recording the bogus state
    path.write_bytes(_CRASH + b".")
    with pytest.raises(DataError, match=r"crash\.bin: malformed state of numpy dtype u1"):
        read_bin(path)
    # in a child process as well, so that a regression fails this test instead of killing pytest
    script = textwrap.dedent("""
        import sys
        from otface.data.formats.binset import read_bin
        from otface.errors import DataError
        for path in sys.argv[1:]:
            try:
                read_bin(path)
            except DataError as exc:
                print("DataError", exc)
    """)
    (tmp_path / "crash_eof.bin").write_bytes(_CRASH)
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "crash_eof.bin")],
                          cwd=_REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died with {proc.returncode} (signal?): {proc.stderr[-2000:]}"
    assert proc.stdout.count("DataError") == 2, proc.stdout + proc.stderr


_FUZZ = r"""
import collections, io, json, pickle, random, struct, sys, time
import numpy as np
from otface.data.formats.binset import read_bin
from otface.errors import DataError

rng = random.Random(20240611)
images = [bytes([0xFF, 0xD8]) + bytes(rng.randrange(256) for _ in range(n)) for n in (5, 9, 3, 12)]
arrays = [np.frombuffer(b, np.uint8) for b in images]
seeds = [pickle.dumps((arrays, np.array([True, False])), protocol=4),
         pickle.dumps((arrays, [np.bool_(True), np.bool_(False)]), protocol=5),
         pickle.dumps((images[:2] + arrays[2:], [True, np.bool_(False)]), protocol=2),
         pickle.dumps(([a.view(np.int8) for a in arrays], np.array([1, 0], ">i8")), protocol=3)]
path = sys.argv[1]
for seed in seeds:  # each seed is a valid set
    with open(path, "wb") as f:
        f.write(seed)
    assert read_bin(path)[0] == images
opcodes = sorted(set(pickle.dumps(seeds, protocol=5)) | set(b"()]}.0bRt\x85\x86\x87\x93\x94\x8c\x88\x89Nh"))
count, seen, start = int(sys.argv[2]), collections.Counter(), time.perf_counter()
for i in range(count):
    data = bytearray(seeds[i % len(seeds)])
    for _ in range(rng.randint(1, 4)):
        at, how = rng.randrange(len(data)), rng.random()
        if how < 0.4:
            data[at] = rng.randrange(256)
        elif how < 0.6:
            data[at] = rng.choice(opcodes)
        elif how < 0.75:
            data[at:at] = bytes([rng.choice(opcodes)])
        elif how < 0.9:
            del data[at:at + rng.randint(1, 8)]
        else:
            data[at:at] = struct.pack("<i", rng.choice([0, 1, -1, 255, 2**31 - 1, -2**31]))
    with open(path, "wb") as f:
        f.write(data)
    try:
        read_bin(path)
        seen["ok"] += 1
    except Exception as exc:
        seen[type(exc).__name__] += 1
print(json.dumps({"variants": count, "seconds": time.perf_counter() - start, "seen": seen}))
"""


def test_fuzzed_files_give_data_errors_only(tmp_path):
    """Random damage to valid numpy-holding pickles: one child reads 5000 variants (about 2 s); it
    must neither die by a signal nor raise anything but ``DataError``."""
    proc = subprocess.run([sys.executable, "-c", _FUZZ, str(tmp_path / "fuzz.bin"), "5000"],
                          cwd=_REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode < 0:
        pytest.fail(f"the fuzz child died by signal {signal.Signals(-proc.returncode).name}; "
                    f"its last input is {tmp_path / 'fuzz.bin'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    assert sum(report["seen"].values()) == 5000
    assert set(report["seen"]) <= {"ok", "DataError"}, report
    assert report["seen"].get("DataError", 0) > 2500, report


_BIG = b"\x00" * 1000


@pytest.mark.parametrize("value, message", [
    (_array((5,), np.dtype("u1"), b"abc"), r"shape \(5,\) of uint8 needs 5 bytes, the pickle has 3"),
    (_array((3,), np.dtype("<i4"), b"abc"), r"shape \(3,\) of int32 needs 12 bytes, the pickle has 3"),
    (_array((3,), np.dtype("<i4"), b"abc", version=False), r"needs 12 bytes, the pickle has 3"),
    (_array((2**62, 2**62), np.dtype("u1"), b"abc"), r"needs \d+ bytes, the pickle has 3"),
    (_array((-1,), np.dtype("u1"), b"abc"), r"numpy array: malformed shape"),
    (_array([3], np.dtype("u1"), b"abc"), r"numpy array: malformed shape"),
    (_array((True,), np.dtype("u1"), b"a"), r"numpy array: malformed shape"),
    (_array((1,) * 33, np.dtype("u1"), b"a"), r"numpy array: malformed shape"),
    (_array((3,), np.dtype("u1"), "abc"), r"numpy array: data is a str, not bytes"),
    (_array((3,), "u1", b"abc"), r"expected a numpy dtype, got str"),
    (_array((3,), _array((3,), np.dtype("u1"), b"abc"), b"abc"), r"expected a numpy dtype, got _reconstruct"),
    (_array((3,), np.dtype("u1"), b"abc", fortran=2), r"malformed state of a numpy array"),
    (_array((2,), np.dtype(bool), b"\x01\x02"), r"bool data that is not 0 or 1"),
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b")), r"malformed state of a numpy array"),
    (_Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (2, (3,), np.dtype("u1"), False, b"abc")),
     r"malformed state of a numpy array"),
    (_Reduce(_RECONSTRUCT, (np.dtype, (0,), b"b"), (1, (3,), np.dtype("u1"), False, b"abc")),
     r"malformed numpy array in the pickle"),
    (_Reduce(_FROMBUFFER, (b"abc", np.dtype("u1"), (4,), "C")), r"needs 4 bytes, the pickle has 3"),
    (_Reduce(_FROMBUFFER, (b"abcd", np.dtype("u1"), (2, 2), "K")), r"malformed numpy array \(protocol 5\)"),
    (_Reduce(_FROMBUFFER, (b"abcd", np.dtype("u1"), (4,), "C"), {"x": 1}), r"unexpected state for _frombuffer"),
    (_Reduce(_SCALAR, (np.dtype(bool), b"\x01\x00")), r"numpy scalar: shape \(\) of bool needs 1 bytes"),
    (_Reduce(_SCALAR, (np.dtype(bool),)), r"malformed numpy scalar"),
    (_Reduce(_SCALAR, (np.dtype(object), [1])), r"numpy dtype 'O8' is not allowed"),
    (np.array([b"x", b"y"], dtype=object), r"numpy dtype 'O8' is not allowed"),
    (np.array([b"ab"], dtype="S2"), r"numpy dtype 'S2' is not allowed"),
    (np.array(["ab"]), r"numpy dtype 'U2' is not allowed"),
    (np.array([1j], dtype="c8"), r"numpy dtype 'c8' is not allowed"),
    (np.array([1], dtype="M8[s]"), r"numpy dtype 'M8' is not allowed"),
    (np.zeros(2, dtype=[("a", "u1"), ("b", "<f4")]), r"numpy dtype 'V5' is not allowed"),
    (np.dtype(("u1", (2,))), r"numpy dtype 'V2' is not allowed"),
    (_dtype("zz"), r"numpy dtype 'zz' is not allowed"),
    (_dtype("u1", (3, "N", None, -1, -1, 0)), r"malformed state of numpy dtype u1"),
    (_dtype("u1", (3, "|", ("u1", (2,)), None, None, -1, -1, 0)), r"malformed state of numpy dtype u1"),
    (_dtype("i4", (3, "|", None, None, None, -1, -1, 0)), r"malformed state of numpy dtype i4"),
    (_dtype("u1", (4, "|", None, None, None, -1, -1, 0)), r"malformed state of numpy dtype u1"),
    (_dtype("u1", (3, "!", None, None, None, -1, -1, 0)), r"malformed state of numpy dtype u1"),
    (_Reduce(np.dtype, ("u1", 5, True)), r"malformed numpy dtype"),
    (_Reduce(np.ndarray, ((3,), "u1")), r"not a readable .*TypeError"),
    (_Reduce(bytearray, (10**12,)), r"(builtins|__builtin__)\.bytearray is allowed only with no argument or a bytes"),
    (_Reduce(bytes, ("abc", "ascii")), r"(builtins|__builtin__)\.bytes is allowed only with no argument or a bytes"),
    (_Reduce(codecs.encode, ("abc", "utf-8")), r"_codecs\.encode is allowed only as encode\(str, 'latin1'\)"),
    ([_array((1000,), np.dtype("u1"), _BIG), _array((1000,), np.dtype("u1"), _BIG)],
     r"numpy data is larger than the file"),
    (_Reduce(print, ("hi",)), r"global (builtins|__builtin__)\.print is not allowed"),
])
def test_bad_numpy_values_are_data_errors(tmp_path, value, message):
    for protocol in (2, 4, 5):
        path = tmp_path / "np.bin"
        path.write_bytes(pickle.dumps(([value, b"x"], [True]), protocol=protocol))
        with pytest.raises(DataError, match=r"np\.bin: .*" + message):
            read_bin(path)


@pytest.mark.parametrize("body, message", [
    (b"\x80\x04cnumpy\ndtype\n}b.", r"cannot set the state of numpy\.dtype"),
    (b"\x80\x04cnumpy\nndarray\n}b.", r"cannot set the state of numpy\.ndarray"),
    (b"\x80\x04cnumpy\ndtype\n)}\x86b.", r"cannot set the state of numpy\.dtype"),  # slot state
    (b"\x80\x04cnumpy\ndtype\n)\x81.", r"NEWOBJ class argument"),
    (b"\x80\x04cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R)b)b.", r"unexpected state for numpy\.dtype"),
    (b"\x80\x04X\x01\x00\x00\x00xQ.", r"persistent ids are not allowed"),
    (b"\x80\x02\x82\x01.", r"not a readable"),
])
def test_numpy_stand_ins_refuse_misuse(tmp_path, body, message):
    path = tmp_path / "m.bin"
    path.write_bytes(body)
    with pytest.raises(DataError, match=r"m\.bin: .*" + message):
        read_bin(path)
    _check_all_protocols(tmp_path, [np.arange(3, dtype=np.uint8), np.bool_(True)])  # still intact


def test_deep_and_self_referencing_structures_are_data_errors(tmp_path):
    path = tmp_path / "deep.bin"
    deep = [b"x"]
    for _ in range(100):
        deep = [deep]
    path.write_bytes(pickle.dumps(([deep, b"y"], [True])))
    with pytest.raises(DataError, match=r"deep\.bin: the pickle nests more than 16 levels deep"):
        read_bin(path)
    loop = []
    loop.append((loop, b"x"))
    path.write_bytes(pickle.dumps((loop, [True, loop]), protocol=4))
    with pytest.raises(DataError, match=r"deep\.bin: image 0 is a tuple"):
        read_bin(path)
    got = _unpickle(path)
    assert got[0][0][0] is got[0] and got[1][1] is got[0]


@pytest.mark.parametrize("body, message", [
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.", r"only 4 remain"),  # BINBYTES8 of 2**62 bytes
    (b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"N.", r"UnpicklingError"),  # a FRAME as long
    # LONG_BINPUT 680825748: CPython's unpickler would allocate and zero a 10 GB memo for it
    (b"\x80\x04N" + b"r" + struct.pack("<I", 680825748) + b".", r"memo index 680825748 out of order"),
    (b"\x80\x02N\x94q\x02.", r"memo index 2 out of order \(memo has 1 entries\)"),
    (b"(lp99999999999\n.", r"memo index 99999999999 out of order"),  # protocol 0 PUT
])
def test_huge_lengths_and_indices_in_the_pickle_are_data_errors(tmp_path, body, message):
    path = tmp_path / "len.bin"
    path.write_bytes(body)
    with pytest.raises(DataError, match=r"len\.bin: not a readable verification \.bin file.*" + message):
        read_bin(path)
    path.write_bytes(b"\x80\x02]q\x00(N\x94h\x00q\x01e\x85.")  # in-order puts and a re-put: fine
    with pytest.raises(DataError, match=r"len\.bin: expected a pickled \(images, issame\) pair, got tuple"):
        read_bin(path)
