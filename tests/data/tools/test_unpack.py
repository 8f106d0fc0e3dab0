"""unpack is the inverse of pack and pairs: a round trip gives back the same bytes and labels."""

import io

import numpy as np
import pytest
from PIL import Image

from otface.data.formats.binset import read_bin, write_bin
from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import unpack_record, write_face_dataset
from otface.data.tools.pack import pack_folder
from otface.data.tools.pairs import pairs_to_bin
from otface.data.tools.unpack import unpack_bin, unpack_records
from otface.errors import DataError, InputNotFoundError


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 255 - value, 3 * value % 256)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _payloads(root):
    data = RecordDataset(root)
    return [unpack_record(data.reader.read(int(k)))[1] for k in data.keys], data.labels


def test_records_unpack_and_pack_back_to_the_same_images_and_labels(tmp_path):
    samples = [(_jpeg(10 * i), label) for i, label in enumerate([0, 0, 1, 2, 2, 2, 4])]
    (tmp_path / "rec").mkdir()
    write_face_dataset(tmp_path / "rec", samples, num_classes=5, image_size=(16, 16))
    assert unpack_records(tmp_path / "rec", tmp_path / "folder", progress=False) == 7
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["000000", "000001", "000002", "000004"]

    pack_folder(tmp_path / "folder", tmp_path / "again", image_size=(16, 16), progress=False)
    images, labels = _payloads(tmp_path / "again")
    assert images == [image for image, _ in samples]  # stored bytes unchanged both ways
    np.testing.assert_array_equal(labels, [0, 0, 1, 2, 2, 2, 3])  # the empty identity 3 has no folder

    unpack_records(tmp_path / "again", tmp_path / "named", progress=False)  # names from classes.txt
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == ["000000", "000001", "000002", "000004"]


def test_bin_unpacks_to_a_pair_list_that_converts_back(tmp_path):
    images = [_jpeg(v) for v in range(0, 120, 20)]
    write_bin(tmp_path / "set.bin", images, [True, False, True])
    assert unpack_bin(tmp_path / "set.bin", tmp_path / "pairs") == 3
    assert (tmp_path / "pairs" / "pairs.txt").read_text().splitlines()[1] == \
        "images/000001_a.jpg images/000001_b.jpg 0"
    pairs_to_bin(tmp_path / "pairs" / "pairs.txt", tmp_path / "pairs", tmp_path / "again.bin", image_size=(16, 16))
    again, issame = read_bin(tmp_path / "again.bin")
    assert again == images and issame.tolist() == [True, False, True]


def test_classes_file_that_does_not_fit_the_records_is_named(tmp_path):
    (tmp_path / "rec").mkdir()
    write_face_dataset(tmp_path / "rec", [(_jpeg(1), 0), (_jpeg(2), 2)], num_classes=3, image_size=(16, 16))
    (tmp_path / "rec" / "classes.txt").write_text("0\tAda\n1\tBob\n")
    with pytest.raises(DataError, match=r"rec/classes\.txt: 2 names for 3 identities"):
        unpack_records(tmp_path / "rec", tmp_path / "folder", progress=False)
    (tmp_path / "rec" / "classes.txt").write_text("0\tAda\n1\tBob\n3\tCyd\n")
    with pytest.raises(DataError, match=r"rec/classes\.txt:3: expected '2<TAB>name'"):
        unpack_records(tmp_path / "rec", tmp_path / "folder", progress=False)
    assert not (tmp_path / "folder").exists()


def test_missing_bin_is_named(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"set\.bin: verification set not found"):
        unpack_bin(tmp_path / "set.bin", tmp_path / "pairs")
