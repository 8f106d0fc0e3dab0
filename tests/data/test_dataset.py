import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from otface.data.dataset import RecordDataset
from otface.data.recordio import RecordIOError, RecordWriter, pack_record, write_face_dataset
from support.flips import assert_flips_both_ways


def _image(seed: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    labels = [0, 0, 0, 2, 2, 1]
    arrays = [_image(i) for i in range(len(labels))]
    samples = [(_png(a), c) for a, c in zip(arrays, labels)]
    write_face_dataset(tmp_path, samples, num_classes=3, image_size=(12, 12))
    return tmp_path, arrays, labels


def _expected(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


def test_items_labels_and_length(folder):
    root, arrays, labels = folder
    ds = RecordDataset(root, flip=False)
    assert len(ds) == 6 and ds.num_classes == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    for i in range(6):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 12, 12) and y == labels[i]
        torch.testing.assert_close(x, _expected(arrays[i]), rtol=0, atol=0)


def test_flip_gives_the_image_or_its_mirror(folder):
    root, arrays, _ = folder
    ds = RecordDataset(root, flip=True)
    assert_flips_both_ways(lambda: ds[3][0], _expected(arrays[3]), _expected(arrays[3][:, ::-1].copy()))


def test_dataloader_workers_read_the_same_data(folder):
    root, _, labels = folder
    ds = RecordDataset(root, flip=False)
    ds[0]  # map the file in the parent before the workers fork
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    xs, ys = zip(*loader)
    torch.testing.assert_close(torch.cat(xs), torch.stack([ds[i][0] for i in range(6)]))
    assert torch.cat(ys).tolist() == labels


def _raw_folder(tmp_path, labels, num_classes, with_header):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        start = 0
        if with_header:
            w.write(0, pack_record([len(labels) + 1.0, len(labels) + 1.0 + num_classes], b""))
            start = 1
        for k, label in enumerate(labels, start):
            w.write(k, pack_record(label, _png(_image(k))))
    (tmp_path / "property").write_text(f"{num_classes},12,12")


def test_label_out_of_range_is_named(tmp_path):
    _raw_folder(tmp_path, [0, 1, 3], num_classes=3, with_header=True)
    with pytest.raises(RecordIOError, match=r"train\.rec: record 3: label 3 outside \[0, 3\)"):
        RecordDataset(tmp_path)
    ds = RecordDataset(tmp_path, validate_labels=False)  # checked lazily instead
    assert ds[0][1] == 0
    with pytest.raises(RecordIOError, match="record 3: label 3"):
        ds[2]
    with pytest.raises(RecordIOError, match="record 3: label 3"):
        ds.labels


def test_negative_label_is_named(tmp_path):
    _raw_folder(tmp_path, [0, -1], num_classes=2, with_header=True)
    with pytest.raises(RecordIOError, match=r"record 2: label -1 outside"):
        RecordDataset(tmp_path)


def test_folder_without_header_record_uses_every_key(tmp_path):
    _raw_folder(tmp_path, [1, 0, 1], num_classes=2, with_header=False)
    ds = RecordDataset(tmp_path, flip=False)
    assert len(ds) == 3 and ds.labels.tolist() == [1, 0, 1]


def test_header_announcing_missing_images(tmp_path):
    _raw_folder(tmp_path, [0, 1], num_classes=2, with_header=True)
    (tmp_path / "train.idx").write_text("\n".join((tmp_path / "train.idx").read_text().splitlines()[:2]) + "\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: record 0 announces images 1\.\.2 but key 2"):
        RecordDataset(tmp_path)


def test_missing_property(tmp_path):
    _raw_folder(tmp_path, [0], num_classes=1, with_header=True)
    (tmp_path / "property").unlink()
    with pytest.raises(RecordIOError, match="missing property"):
        RecordDataset(tmp_path)


def test_truncated_rec_is_an_error_or_drops_the_lost_records_with_their_labels(folder):
    root, arrays, labels = folder
    reader = RecordDataset(root).reader
    cut = reader.offset(4) + 20  # record 4 loses its end, records 5.. are gone
    data = (root / "train.rec").read_bytes()
    (root / "train.rec").write_bytes(data[:cut])
    with pytest.raises(RecordIOError, match=r"train\.(rec|idx)"):
        RecordDataset(root)
    ds = RecordDataset(root, flip=False, skip_unreadable=True)
    assert [key for key, _ in ds.skipped] == [4, 5, 6]
    assert all("truncated record" in reason for _, reason in ds.skipped)
    assert ds.keys.tolist() == [1, 2, 3] and ds.labels.tolist() == labels[:3]
    for i in range(3):
        assert torch.equal(ds[i][0], _expected(arrays[i])) and ds[i][1] == labels[i]
