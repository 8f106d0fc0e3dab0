import numpy as np
import pytest
import torch
from PIL import Image

from otface.data.formats.binset import load_verification_set, read_bin
from otface.data.tools.pairs import (
    detect_pairs_format,
    lfw_image_path,
    pairs_to_bin,
    read_pair_list,
    read_pairs,
)
from otface.errors import ConfigError, DataError, InputNotFoundError

H, W = 20, 16
PEOPLE = {"Alice_Able": 3, "Bob_Baker": 2, "Carol_Cole": 1}
PAIRS = [  # LFW order: per fold, genuine pairs then impostor pairs
    (("Alice_Able", 1), ("Alice_Able", 3), True),
    (("Alice_Able", 2), ("Bob_Baker", 1), False),
    (("Bob_Baker", 1), ("Bob_Baker", 2), True),
    (("Carol_Cole", 1), ("Alice_Able", 1), False),
]


def _face(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Smooth (JPEG keeps it within a few levels), its colour set by ``seed``."""
    colour = np.array([(40 + 23 * seed) % 180, (90 + 57 * seed) % 180, (150 + 71 * seed) % 180])
    ramp = np.linspace(0, 60, w)[None, :, None]
    return np.broadcast_to(colour + ramp, (h, w, 3)).astype(np.uint8)


def _lines(pairs) -> str:
    """pairs.txt lines: 'name n1 n2' for a genuine pair, 'name1 n1 name2 n2' otherwise."""
    fields = ([*a, b[1]] if same else [*a, *b] for a, b, same in pairs)
    return "".join("\t".join(map(str, f)) + "\n" for f in fields)


@pytest.fixture
def lfw(tmp_path):
    """An LFW folder (``name/name_%04d.jpg``) and its pairs.txt with a '2 folds, 1 pair' header."""
    root = tmp_path / "lfw"
    seed = 0
    for name, count in PEOPLE.items():
        for number in range(1, count + 1):
            path = lfw_image_path(root, name, number)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_face(seed)).save(path, quality=90)
            seed += 1
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("2\t1\n" + _lines(PAIRS))
    return root, pairs_txt


def _files(root, pairs) -> list:
    return [lfw_image_path(root, *image) for a, b, _ in pairs for image in (a, b)]


def _pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def test_lfw_image_path():
    assert lfw_image_path("lfw", "Bob_Baker", 7).as_posix() == "lfw/Bob_Baker/Bob_Baker_0007.jpg"
    assert lfw_image_path("lfw", "Bob_Baker", 12345, ext=".png").name == "Bob_Baker_12345.png"


@pytest.mark.parametrize("header", ["2\t1\n", "2\n", "", "\n2 1\n\n"])
def test_read_pairs_keeps_the_order_and_accepts_every_header_form(tmp_path, header):
    path = tmp_path / "pairs.txt"
    path.write_text(header + _lines(PAIRS).replace("\n", "\n\n", 1))
    assert read_pairs(path) == PAIRS
    assert detect_pairs_format(path) == "lfw"


def test_lfw_pairs_round_trip_through_the_bin(lfw, tmp_path):
    root, pairs_txt = lfw
    out = tmp_path / "sets" / "lfw.bin"
    assert len(pairs_to_bin(pairs_txt, root, out, image_size=(H, W))) == 4
    files = _files(root, PAIRS)
    images, issame = read_bin(out)
    assert images == [path.read_bytes() for path in files]  # right-size JPEGs stored as they are
    assert issame.tolist() == [True, False, True, False]
    decoded, issame = load_verification_set(out, image_size=(H, W))
    assert issame.tolist() == [True, False, True, False]
    for i, path in enumerate(files):
        assert torch.equal(decoded[i], _pixels(path)), path
    assert [p.name for p in out.parent.iterdir()] == ["lfw.bin"]  # no temporary left


def test_path_list_round_trip_and_re_encoding(lfw, tmp_path):
    root, _ = lfw
    Image.fromarray(_face(20)).save(root / "extra.png")
    pairs_txt = tmp_path / "list.txt"
    pairs_txt.write_text("Alice_Able/Alice_Able_0001.jpg extra.png 0\n"
                         "Bob_Baker/Bob_Baker_0002.jpg Bob_Baker/Bob_Baker_0001.jpg 1\n")
    expected = [("Alice_Able/Alice_Able_0001.jpg", "extra.png", False),
                ("Bob_Baker/Bob_Baker_0002.jpg", "Bob_Baker/Bob_Baker_0001.jpg", True)]
    assert detect_pairs_format(pairs_txt) == "list" and read_pair_list(pairs_txt) == expected
    auto, explicit = tmp_path / "auto.bin", tmp_path / "explicit.bin"
    assert len(pairs_to_bin(pairs_txt, root, auto, image_size=(H, W))) == 2
    pairs_to_bin(pairs_txt, root, explicit, image_size=(H, W), format="list")
    assert auto.read_bytes() == explicit.read_bytes()
    images, issame = read_bin(auto)
    assert issame.tolist() == [False, True]
    assert images[1][:2] == b"\xff\xd8" and images[1] != (root / "extra.png").read_bytes()
    decoded, _ = load_verification_set(auto, image_size=(H, W))
    for i, (first, second, _) in enumerate(expected):
        for j, rel in enumerate((first, second)):
            source = _pixels(root / rel).float()
            error = (decoded[2 * i + j].float() - source).abs().mean()
            assert (error == 0) if rel.endswith(".jpg") else (error < 2), rel


def test_resize_and_extension(tmp_path):
    root, small = tmp_path / "lfw", _face(5)
    for number in (1, 2):
        path = lfw_image_path(root, "Dan_Doe", number, ext="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)).save(path)
    (tmp_path / "pairs.txt").write_text("Dan_Doe 1 2\n")
    out = tmp_path / "out.bin"
    with pytest.raises(DataError, match=rf"pairs\.txt:1: .*Dan_Doe_0001\.png: image is {2 * W}x{2 * H}"):
        pairs_to_bin(tmp_path / "pairs.txt", root, out, image_size=(H, W), ext="png")
    assert len(pairs_to_bin(tmp_path / "pairs.txt", root, out, image_size=(H, W), ext="png", resize=True)) == 1
    decoded, issame = load_verification_set(out, image_size=(H, W))
    assert issame.tolist() == [True]
    assert (decoded.float() - torch.from_numpy(small).permute(2, 0, 1)).abs().mean() < 2


@pytest.mark.parametrize("line, expected", [
    ("Alice_Able 1 3", "lfw"),
    ("Alice_Able 2 Bob_Baker 1", "lfw"),
    ("10 300", "lfw"),
    ("1100", "lfw"),
    ("a/x.jpg b/y.jpg 1", "list"),
    ("12 13 1", "lfw"),  # ambiguous: an LFW line unless format="list" says otherwise
])
def test_detect_pairs_format(tmp_path, line, expected):
    path = tmp_path / "pairs.txt"
    path.write_text("\n" + line + "\n")
    assert detect_pairs_format(path) == expected


@pytest.mark.parametrize("text, fmt, message", [
    ("Alice_Able 1 3\nAlice_Able 2\n", "auto", r":2: expected 'name n1 n2' .* got 2 fields: 'Alice_Able 2'"),
    ("Alice_Able 1 3\nAlice_Able one 2\n", "auto", r":2: image number 'one' is not a non-negative integer"),
    ("Alice_Able 1 x\n", "lfw", r":1: image number 'x'"),
    ("2 1\nAlice_Able 1 3\n", "auto", r":1: the header '2 1' announces 4 pairs, the file holds 1"),
    ("7\n", "auto", r": no pairs"),
    ("a.jpg b.jpg 1\na.jpg b.jpg 2\n", "auto", r":2: label '2' must be 1 \(same identity\) or 0"),
    ("a.jpg b.jpg 1\na.jpg 1\n", "list", r":2: expected 'path1 path2 label', got 2 fields"),
    ("\n\nAlice_Able\n", "auto", r":3: cannot tell the pair format from 'Alice_Able'"),
    ("", "auto", r": no pairs \(the file is empty\)"),
    (b"a.jpg b.jpg 1\n\xff\xfe.jpg b.jpg 0\n", "list", r": not UTF-8 text"),
])
def test_malformed_files_name_the_file_and_line(lfw, tmp_path, text, fmt, message):
    root, pairs_txt = lfw
    if isinstance(text, bytes):
        pairs_txt.write_bytes(text)
    else:
        pairs_txt.write_text(text)
    out = tmp_path / "out.bin"
    with pytest.raises(DataError, match=r"pairs\.txt" + message):
        pairs_to_bin(pairs_txt, root, out, image_size=(H, W), format=fmt)
    assert not out.exists()


def test_missing_or_wrong_size_images_name_the_line_and_keep_the_old_bin(lfw, tmp_path):
    root, pairs_txt = lfw
    out = tmp_path / "lfw.bin"
    pairs_to_bin(pairs_txt, root, out, image_size=(H, W))
    before = out.read_bytes()
    pairs_txt.write_text(_lines(PAIRS[:2]) + "Bob_Baker 1 9\n")
    with pytest.raises(DataError, match=r"pairs\.txt:3: image file .*Bob_Baker_0009\.jpg not found"):
        pairs_to_bin(pairs_txt, root, out, image_size=(H, W))
    pairs_txt.write_text(_lines(PAIRS))
    Image.fromarray(_face(0, H + 1, W)).save(lfw_image_path(root, "Carol_Cole", 1))
    wrong_size = rf"pairs\.txt:4: .*Carol_Cole_0001\.jpg: image is {W}x{H + 1}, expected {W}x{H}"
    with pytest.raises(DataError, match=wrong_size):
        pairs_to_bin(pairs_txt, root, out, image_size=(H, W))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lfw", "lfw.bin", "pairs.txt"]


def test_unknown_format_is_refused(lfw, tmp_path):
    root, pairs_txt = lfw
    with pytest.raises(ConfigError, match="format must be one of"):
        pairs_to_bin(pairs_txt, root, tmp_path / "out.bin", format="csv")


def test_missing_pair_file_or_image_folder_is_named(lfw, tmp_path):
    root, pairs_txt = lfw
    out = tmp_path / "out.bin"
    with pytest.raises(InputNotFoundError, match=r"nothing\.txt: pair list not found"):
        pairs_to_bin(tmp_path / "nothing.txt", root, out, image_size=(H, W))
    with pytest.raises(InputNotFoundError, match=r"no_images: image folder not found"):
        pairs_to_bin(pairs_txt, tmp_path / "no_images", out, image_size=(H, W))
    assert not out.exists()
