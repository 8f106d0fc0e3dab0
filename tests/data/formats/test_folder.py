import numpy as np
import pytest
import torch
from PIL import Image

from otface.data.formats.folder import ImageFolderDataset, scan_image_folder
from otface.errors import DataError

H, W = 20, 16


def _face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # format from the extension


@pytest.fixture
def tree(tmp_path):
    """alice (3 formats), bob (upper-case extension, string order), carol (empty), dave, and
    entries that must be ignored: hidden files and folders, other files, nested folders, files
    directly in the root."""
    root = tmp_path / "faces"
    expected = ["alice/a.jpeg", "alice/b.bmp", "alice/c.webp", "bob/10.PNG", "bob/2.jpg", "dave/z.jpg"]
    for seed, rel in enumerate(expected):
        _save(root / rel, _face(seed))
    (root / "carol").mkdir()
    for seed, rel in enumerate(["bob/.hidden.jpg", "bob/nested/3.jpg", ".git/x.jpg", "readme.jpg"], 100):
        _save(root / rel, _face(seed))
    (root / "bob" / "notes.txt").write_text("not an image")
    return root, [root / rel for rel in expected]


def test_scan_orders_filters_and_keeps_empty_identities(tree):
    root, expected = tree
    paths, labels, names = scan_image_folder(root)
    assert paths == expected
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 0, 1, 1, 3]
    assert names == ["alice", "bob", "carol", "dave"]


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="no identity folder"):
        scan_image_folder(tmp_path)
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"1 identity folders but no image"):
        scan_image_folder(tmp_path)


def _expected(path, flip: bool = False) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"))
    if flip:
        array = array[:, ::-1]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def test_items_match_the_files(tree):
    root, expected = tree
    ds = ImageFolderDataset(root, expected_size=(H, W))
    assert len(ds) == 6 and ds.num_classes == 4
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1, 3]
    for i, path in enumerate(expected):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, H, W)
        assert y == int(ds.labels[i]) and isinstance(y, int)
        torch.testing.assert_close(x, _expected(path), rtol=0, atol=0)


def test_corrupt_and_wrong_size_images_raise_naming_the_file(tree):
    root, expected = tree
    truncated = expected[4].read_bytes()
    expected[4].write_bytes(truncated[: len(truncated) // 2])
    ds = ImageFolderDataset(root, expected_size=(H, W))
    with pytest.raises(DataError, match=r"bob/2\.jpg: cannot decode"):
        ds[4]
    _save(expected[5], np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(DataError, match=rf"dave/z\.jpg: image is {W}x{H + 1}, expected {W}x{H}$"):
        ds[5]
    inferred = ImageFolderDataset(root)  # no size given: the first image's
    assert inferred.expected_size == (H, W)
    with pytest.raises(DataError, match=rf"dave/z\.jpg: image is {W}x{H + 1}, expected {W}x{H} \(the size of "
                                        rf".*{expected[0].name}\)"):
        inferred[5]


def test_a_folder_whose_first_images_are_all_unreadable_is_an_error(tree):
    root, expected = tree
    for path in expected:
        path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"none of its first \d+ images can be read; first: .*cannot decode"):
        ImageFolderDataset(root)
