import numpy as np
import pytest
from PIL import Image

from otface.data.formats.folder import scan_image_folder
from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import RecordIOError, RecordReader, read_property, unpack_record
from otface.data.tools import pack
from otface.data.tools.pack import pack_folder, read_classes, write_classes
from otface.errors import ConfigError, DataError, InputNotFoundError, RunError

H, W = 20, 16
OUTPUT = ["classes.txt", "property", "train.idx", "train.rec"]


def _face(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth image (JPEG keeps it within a few levels) whose colour identifies ``seed``; the
    left-right ramp makes a mirrored copy differ."""
    colour = np.array([(40 + 23 * seed) % 180, (90 + 57 * seed) % 180, (150 + 71 * seed) % 180])
    ramp = np.linspace(0, 60, w)[None, :, None]
    return np.broadcast_to(colour + ramp, (h, w, 3)).astype(np.uint8)


def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # format from the extension


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


@pytest.fixture
def src(tmp_path):
    """id0: three RGB JPEGs; id1: PNG + BMP; id2: empty; id3: WebP + grey JPEG."""
    root = tmp_path / "faces"
    for seed, rel in enumerate(["id0/a.jpg", "id0/b.jpg", "id0/c.JPG", "id1/x.png", "id1/y.bmp", "id3/w.webp"]):
        _save(root / rel, _face(seed))
    _save(root / "id3/z.jpg", _face(9)[..., 0])
    (root / "id2").mkdir()
    return root


def _check_against_sources(dst, paths, labels) -> None:
    """Every packed image equals its source file decoded directly (JPEG sources exactly, other
    formats within JPEG error) and carries its label."""
    ds = RecordDataset(dst)
    assert ds.labels.tolist() == list(labels)
    for i, path in enumerate(paths):
        x, y = ds[i]
        assert y == labels[i]
        got = x.permute(1, 2, 0).numpy().astype(np.float32)
        expected = _pixels(path)
        if path.suffix.lower() == ".jpg":
            np.testing.assert_allclose(got, expected, atol=1e-3)
        else:
            assert np.abs(got - expected).mean() < 2.0, path


def test_pack_round_trips_through_record_dataset(src, tmp_path):
    dst = tmp_path / "packed"
    report = pack_folder(src, dst, image_size=(H, W), progress=False)
    paths, labels, names = scan_image_folder(src)
    assert (report.num_images, report.num_identities, report.num_reencoded) == (7, 4, 3)
    assert report.skipped == [] and report.empty_identities == ["id2"] and report.root == dst
    assert sorted(p.name for p in dst.iterdir()) == OUTPUT  # no temporaries left
    assert read_property(dst) == (4, H, W)
    assert read_classes(dst / "classes.txt") == names == ["id0", "id1", "id2", "id3"]
    _check_against_sources(dst, paths, labels.tolist())


def test_right_size_jpegs_are_stored_byte_for_byte(src, tmp_path):
    pack_folder(src, tmp_path / "packed", image_size=(H, W), progress=False)
    paths, _, _ = scan_image_folder(src)
    reader = RecordReader(tmp_path / "packed/train.rec", tmp_path / "packed/train.idx")
    for key, path in enumerate(paths, 1):
        stored = unpack_record(reader.read(key))[1]
        if path.suffix.lower() == ".jpg":
            assert stored == path.read_bytes(), path
        else:
            assert stored[:2] == b"\xff\xd8" and Image.open(path).format != "JPEG", path


def test_wrong_size_raises_naming_the_file_and_writes_nothing(src, tmp_path):
    _save(src / "id1/big.png", _face(7, 2 * H, 2 * W))
    dst = tmp_path / "packed"
    with pytest.raises(DataError, match=rf"id1/big\.png: image is {2 * W}x{2 * H}, expected {W}x{H}"):
        pack_folder(src, dst, image_size=(H, W), progress=False)
    assert list(dst.iterdir()) == []


def test_resize_scales_wrong_size_images(src, tmp_path):
    small = _face(7)
    _save(src / "id1/big.png", np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
    dst = tmp_path / "packed"
    report = pack_folder(src, dst, image_size=(H, W), resize=True, progress=False)
    assert report.num_images == 8 and report.num_reencoded == 4
    ds = RecordDataset(dst)
    x, y = ds[3]  # id1/big.png sorts first in id1
    assert y == 1 and x.shape == (3, H, W)
    assert np.abs(x.permute(1, 2, 0).numpy().astype(np.float32) - small).mean() < 2.0


def test_skip_lists_bad_images_and_keeps_every_other_label(src, tmp_path):
    truncated = (src / "id0/b.jpg").read_bytes()
    (src / "id0/b.jpg").write_bytes(truncated[: len(truncated) // 2])
    _save(src / "id1/x.png", _face(3, H + 2, W))
    (src / "id3/w.webp").write_bytes(b"not an image")
    _save(src / "id3/z.jpg", _face(9, H, W + 1))
    _save(src / "id4/k.jpg", _face(11))
    dst = tmp_path / "packed"
    report = pack_folder(src, dst, image_size=(H, W), on_error="skip", progress=False)
    bad = [src / "id0/b.jpg", src / "id1/x.png", src / "id3/w.webp", src / "id3/z.jpg"]
    assert [path for path, _ in report.skipped] == bad
    reasons = [reason for _, reason in report.skipped]
    assert "cannot decode" in reasons[0] and "cannot decode" in reasons[2]
    assert f"expected {W}x{H}" in reasons[1] and f"{W + 1}x{H}" in reasons[3]
    assert report.empty_identities == ["id2", "id3"] and report.num_identities == 5
    assert read_property(dst)[0] == 5
    paths, labels, _ = scan_image_folder(src)
    kept = [(p, label) for p, label in zip(paths, labels.tolist()) if p not in bad]
    assert [label for _, label in kept] == [0, 0, 1, 4]
    _check_against_sources(dst, [p for p, _ in kept], [label for _, label in kept])


def test_nothing_packable_is_an_error(src, tmp_path):
    for path in scan_image_folder(src)[0]:
        path.write_bytes(b"broken")
    dst = tmp_path / "packed"
    with pytest.raises(RunError, match=r"faces: none of the 7 images could be packed \(first: .*id0/a\.jpg"):
        pack_folder(src, dst, image_size=(H, W), on_error="skip", progress=False)
    assert list(dst.iterdir()) == []


def test_failure_mid_pack_leaves_no_new_files_and_keeps_the_old_pack(src, tmp_path, monkeypatch):
    dst = tmp_path / "packed"
    pack_folder(src, dst, image_size=(H, W), progress=False)
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # an interruption, not a per-image error
        return encode(*args, **kwargs)

    encode = pack.encode_face_image
    monkeypatch.setattr(pack, "encode_face_image", failing)
    _save(src / "id2/new.jpg", _face(12))  # the new pack would differ from the old one
    with pytest.raises(KeyboardInterrupt):
        pack_folder(src, dst, image_size=(H, W), progress=False)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        pack_folder(src, tmp_path / "fresh", image_size=(H, W), progress=False)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_failure_while_renaming_never_leaves_a_complete_looking_set(src, tmp_path, monkeypatch):
    dst = tmp_path / "packed"
    pack_folder(src, dst, image_size=(H, W), progress=False)
    _save(src / "id2/new.jpg", _face(12))
    renames = []

    def failing_replace(source, target):
        renames.append(target)
        if len(renames) == 2:  # the new train.rec is in place, the old train.idx still there
            raise OSError("disk full")
        replace(source, target)

    replace = pack.os.replace
    monkeypatch.setattr(pack.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        pack_folder(src, dst, image_size=(H, W), progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in dst.iterdir()) == ["classes.txt", "train.idx", "train.rec"]
    with pytest.raises(RecordIOError, match="missing property file"):
        RecordDataset(dst)


def test_workers_give_the_same_bytes(src, tmp_path):
    _save(src / "id1/big.png", _face(7, 2 * H, 2 * W))
    for workers in (0, 2):
        pack_folder(src, tmp_path / f"w{workers}", image_size=(H, W), resize=True, workers=workers,
                    progress=False)
    for name in OUTPUT:
        assert (tmp_path / "w2" / name).read_bytes() == (tmp_path / "w0" / name).read_bytes(), name


@pytest.mark.parametrize("kwargs, kind, message", [
    (dict(on_error="ignore"), ValueError, "on_error must be one of"),
    (dict(workers=-1), ConfigError, "workers must be >= 0"),
    (dict(quality=0), ConfigError, r"quality must lie in \[1, 100\]"),
    (dict(image_size=(0, 112)), ConfigError, "image_size must be a positive"),
])
def test_argument_errors(src, tmp_path, kwargs, kind, message):
    with pytest.raises(kind, match=message):
        pack_folder(src, tmp_path / "packed", progress=False, **kwargs)
    assert not (tmp_path / "packed").exists()


def test_missing_image_folder_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"no_faces: image folder not found"):
        pack_folder(tmp_path / "no_faces", tmp_path / "packed", image_size=(H, W), progress=False)
    assert not (tmp_path / "packed").exists()


def test_output_inside_the_image_folder_is_refused(src):
    with pytest.raises(ConfigError, match="lies inside the image folder"):
        pack_folder(src, src / "packed", image_size=(H, W), progress=False)
    assert not (src / "packed").exists()


def test_classes_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "classes.txt"
    names = ["Aaron Eckhart", "Zoë", "0042"]
    write_classes(path, names)
    assert path.read_text(encoding="utf-8") == "0\tAaron Eckhart\n1\tZoë\n2\t0042\n"
    assert read_classes(path) == names
    path.write_text("0\ta\n2\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"classes\.txt:2: expected '1<TAB>name'"):
        read_classes(path)
    path.write_bytes(b"0\ta\n1\t\xff\xfe\n")
    with pytest.raises(DataError, match=r"classes\.txt: not UTF-8 text"):
        read_classes(path)
    with pytest.raises(DataError, match=r"classes\.txt: identity 1 name 'a\\tb' holds a tab or a line break"):
        write_classes(path, ["a", "a\tb"])
