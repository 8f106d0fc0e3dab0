import numpy as np
import pytest
from PIL import Image

from otface.data.testpacks.megaface import load_images, read_megaface
from otface.errors import DataError, InputNotFoundError
from support.megaface_pack import DISTRACTORS, PROBES, colour, write_pack


def test_lists_labels_and_line_numbers(tmp_path):
    mf = read_megaface(write_pack(tmp_path))
    assert mf.probe_paths == PROBES and mf.distractor_paths == DISTRACTORS
    assert mf.identities == ["Adam_Brody", "Bea_Arthur", "Zac_Efron"]  # sorted folder names
    assert mf.probe_labels.tolist() == [mf.identities.index(p.split("/")[0]) for p in PROBES] == [2, 0, 2, 0, 1, 2]
    assert mf.probe_lines.tolist() == [1, 3, 4, 5, 6, 7] and mf.distractor_lines.tolist() == [1, 3, 4, 5]
    assert mf.removed_probes == mf.removed_distractors == mf.noise_files == []


def test_noise_lists_remove_entries(tmp_path):
    probe_noises = "# FaceScrub noises\nAdam_Brody_9.png\nNobody_1.png\n\n"
    # a tab-separated line (its last field counts), a two-component entry (a path suffix) and a
    # three-component one whose file name is that of a listed image in another folder (no match)
    distractor_noises = "# MegaFace noises\nx\t100/1001@N00/11_0.jpg\n3003@N02/5_1.jpg\n200/9999@N00/11_0.jpg\n"
    root = write_pack(tmp_path, probe_noises=probe_noises, distractor_noises=distractor_noises)
    mf = read_megaface(root)
    assert mf.removed_probes == ["Adam_Brody/Adam_Brody_9.png"]
    assert mf.removed_distractors == ["100/1001@N00/11_0.jpg", "300/3003@N02/5_1.jpg"]
    assert mf.probe_paths == [p for p in PROBES if p != "Adam_Brody/Adam_Brody_9.png"]
    assert mf.probe_labels.tolist() == [2, 0, 2, 1, 2] and mf.probe_lines.tolist() == [1, 3, 4, 6, 7]
    assert mf.distractor_paths == [DISTRACTORS[1], DISTRACTORS[2]] and mf.distractor_lines.tolist() == [3, 4]
    assert mf.noise_files == [root / "facescrub_noises.txt", root / "megaface_noises.txt"]

    ignored = read_megaface(root, probe_noises=None, distractor_noises=None)
    assert ignored.probe_paths == PROBES and ignored.distractor_paths == DISTRACTORS and ignored.noise_files == []


def test_load_images_decodes_every_entry(tmp_path):
    root = write_pack(tmp_path, size=112, probe_noises="Zac_Efron_7.png\n")
    mf = read_megaface(root)
    probes = load_images(mf, "probes")
    assert probes.images.shape == (5, 3, 112, 112) and probes.skipped == []
    assert probes.indices.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(probes.labels, mf.probe_labels)
    for m, path in enumerate(mf.probe_paths):
        expected = np.broadcast_to(np.array(colour(PROBES.index(path)), np.uint8), (112, 112, 3))
        np.testing.assert_array_equal(probes.images[m].numpy().transpose(1, 2, 0), expected)

    part = load_images(mf, "distractors", start=1, stop=3)
    assert part.indices.tolist() == [1, 2] and part.labels is None
    for m, i in enumerate(part.indices):
        expected = np.asarray(Image.open(root / "megaface_images" / DISTRACTORS[i]).convert("RGB"))
        np.testing.assert_array_equal(part.images[m].numpy().transpose(1, 2, 0), expected)


def break_images(root):
    """Probe 1 missing, probe 3 a truncated JPEG, probe 4 the wrong size."""
    (root / "facescrub_images" / PROBES[1]).unlink()
    jpeg = root / "facescrub_images" / PROBES[3]
    Image.new("RGB", (16, 16), (1, 2, 3)).save(jpeg, format="JPEG")
    jpeg.write_bytes(jpeg.read_bytes()[:60])
    Image.new("RGB", (16, 12), (4, 5, 6)).save(root / "facescrub_images" / PROBES[4])


@pytest.mark.parametrize("start, message", [
    (0, r"facescrub_lst line 3: .*Adam_Brody_3\.png: cannot read \(FileNotFoundError"),
    (2, r"facescrub_lst line 5: .*Adam_Brody_9\.png: cannot decode image"),
    (4, r"facescrub_lst line 6: .*Bea_Arthur_2\.png: image is 16x12, expected 16x16"),
])
def test_bad_image_is_an_error_naming_list_line_and_file(tmp_path, start, message):
    root = write_pack(tmp_path)
    break_images(root)
    with pytest.raises(DataError, match=message):
        load_images(read_megaface(root), "probes", start=start, image_size=(16, 16))


def test_skip_drops_bad_images_without_shifting_labels(tmp_path):
    root = write_pack(tmp_path)
    break_images(root)
    mf = read_megaface(root)
    loaded = load_images(mf, "probes", image_size=(16, 16), on_error="skip")
    assert loaded.indices.tolist() == [0, 2, 5]
    assert [i for i, _ in loaded.skipped] == [1, 3, 4]
    assert all(PROBES[i] in message for i, message in loaded.skipped)
    assert loaded.labels.tolist() == [2, 2, 2]  # all Zac_Efron: the Adam_Brody/Bea_Arthur ones went
    for m, i in enumerate(loaded.indices):  # each image is its own entry's
        np.testing.assert_array_equal(loaded.images[m, :, 0, 0].numpy(), colour(i))
    assert loaded.images.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("lines, message", [
    ("A/a.png\nB/b.png\nA/a.png\n", r"facescrub_lst line 3: 'A/a.png' repeats line 1"),
    ("A/a.png\n../x/b.png\n", r"facescrub_lst line 2: '../x/b.png' is not a relative path"),
    ("/abs/a.png\n", r"facescrub_lst line 1: '/abs/a.png' is not a relative path"),
    ("A/a.png\n\nb.png\n", r"facescrub_lst line 3: 'b.png' has no identity folder"),
    ("A/a.png\nB/\udcff.png\n", r"facescrub_lst: not UTF-8 text"),
])
def test_malformed_list_is_an_error_naming_the_line(tmp_path, lines, message):
    (tmp_path / "facescrub_lst").write_text(lines, errors="surrogateescape")  # a lone surrogate: a non-UTF-8 byte
    (tmp_path / "megaface_lst").write_text("")
    with pytest.raises(DataError, match=message):
        read_megaface(tmp_path)


def test_undecodable_noise_list_is_named(tmp_path):
    root = write_pack(tmp_path)
    (root / "megaface_noises.txt").write_bytes(b"# noises\n100/\xff\xfe.jpg\n")
    with pytest.raises(DataError, match=r"megaface_noises\.txt: not UTF-8 text"):
        read_megaface(root)


def test_missing_pack_list_or_image_folder_is_named(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"nowhere: MegaFace test pack folder not found"):
        read_megaface(tmp_path / "nowhere")
    root = write_pack(tmp_path)
    (root / "megaface_lst").unlink()
    with pytest.raises(InputNotFoundError, match=r"megaface_lst: image list not found"):
        read_megaface(root)
    mf = read_megaface(root, distractor_list="facescrub_lst", distractor_dir="gone")
    with pytest.raises(InputNotFoundError, match=r"gone: image folder of .*facescrub_lst not found"):
        load_images(mf, "distractors")


def test_invalid_arguments(tmp_path):
    mf = read_megaface(write_pack(tmp_path))
    with pytest.raises(ValueError, match="which must be one of"):
        load_images(mf, "gallery")
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_images(mf, "probes", on_error="ignore")
