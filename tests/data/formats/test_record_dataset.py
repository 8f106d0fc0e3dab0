import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from otface.data.formats.record_dataset import RecordDataset
from otface.data.formats.recordio import RecordIOError, RecordWriter, pack_record, write_face_dataset


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
    ds = RecordDataset(root)
    assert len(ds) == 6 and ds.num_classes == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    for i in range(6):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 12, 12) and y == labels[i]
        torch.testing.assert_close(x, _expected(arrays[i]), rtol=0, atol=0)


def test_dataloader_workers_read_the_same_data(folder):
    root, _, labels = folder
    ds = RecordDataset(root)
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
    ds = RecordDataset(tmp_path)
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
    ds = RecordDataset(root, skip_unreadable=True)
    assert [key for key, _ in ds.skipped] == [4, 5, 6]
    assert all("truncated record" in reason for _, reason in ds.skipped)
    assert ds.keys.tolist() == [1, 2, 3] and ds.labels.tolist() == labels[:3]
    for i in range(3):
        assert torch.equal(ds[i][0], _expected(arrays[i])) and ds[i][1] == labels[i]


def _rewrite_index(root, edit):
    """Rewrite train.idx with ``edit``({key: offset}) -> {key: offset}."""
    lines = [line.split("\t") for line in (root / "train.idx").read_text().splitlines()]
    index = edit({int(k): int(v) for k, v in lines})
    (root / "train.idx").write_text("".join(f"{k}\t{v}\n" for k, v in index.items()))


def test_an_index_entry_at_another_records_start_is_refused(folder):
    root, _, _ = folder
    _rewrite_index(root, lambda index: {**index, 5: index[2]})  # key 5 points at record 2
    with pytest.raises(RecordIOError, match=r"train.idx:6: key 5 points at offset \d+, the record of key 2 "
                                            r"\(line 3\): one record would be read as two"):
        RecordDataset(root)


def test_a_permuted_index_is_caught_by_the_header_ids(folder):
    root, _, _ = folder
    _rewrite_index(root, lambda index: {**index, 3: index[4], 4: index[3]})  # keys 3 and 4 exchanged
    with pytest.raises(RecordIOError, match=r"record 3 at offset \d+ holds the image of key 4 \(its header's id\)"):
        RecordDataset(root)


def test_records_without_an_id_are_read(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key in range(3):
            writer.write(key, pack_record(float(key), _png(_image(key)), id=0))  # id 0: not recorded
    (tmp_path / "property").write_text("3,12,12\n")
    assert RecordDataset(tmp_path).labels.tolist() == [0, 1, 2]
