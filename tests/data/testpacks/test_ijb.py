import re

import numpy as np
import pytest
import torch
from torch import nn

from otface.data.testpacks.ijb import ijb_paths, iter_ijb_chunks, load_ijb_meta
from otface.data.transforms import normalize
from otface.errors import ConfigError, DataError, InputNotFoundError, RunError
from otface.eval.ijb import embed_ijb, evaluate_ijb, ijb_verification
from support.ijb_layout import IMAGES, PAIRS, SIZE, face, invert, load_all_images, write_layout


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "IJBC"
    frames, faceness = write_layout(root)
    return root, frames, faceness


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 6))


def test_meta_is_read_as_written(layout):
    root, _, faceness = layout
    assert ijb_paths(root, "IJB-C")["face_tid_mid"] == root / "meta" / "ijbc_face_tid_mid.txt"
    for name in ("IJBC", "ijbc", "IJB-C"):
        meta = load_ijb_meta(root, name)
        assert meta.name == "IJBC" and len(meta) == 6
        assert meta.image_names == [i for i, _, _ in IMAGES]
        np.testing.assert_array_equal(meta.templates, [t for _, t, _ in IMAGES])
        np.testing.assert_array_equal(meta.medias, [m for _, _, m in IMAGES])
        np.testing.assert_array_equal(meta.pairs, [[a, b] for a, b, _ in PAIRS])
        np.testing.assert_array_equal(meta.labels, [label for _, _, label in PAIRS])
        np.testing.assert_allclose(meta.faceness, faceness, atol=1e-6)
        np.testing.assert_array_equal(meta.image_lines, np.arange(1, 7))
    assert meta.landmarks.shape == (6, 5, 2)
    with pytest.raises(ConfigError, match="IJB set name must be one of"):
        load_ijb_meta(root, "IJBA")


def test_aligned_faces_reproduce_the_drawn_face(layout):
    root, frames, _ = layout
    loaded = load_all_images(root, "IJBC")
    assert loaded.images.shape == (6, 3, 112, 112) and loaded.images.dtype == torch.uint8
    assert loaded.failures == [] and loaded.indices.tolist() == list(range(6))
    np.testing.assert_array_equal(loaded.templates, [t for _, t, _ in IMAGES])
    ys, xs = np.mgrid[0:112, 0:112].astype(float)
    want = face(xs, ys)
    for image, m in zip(loaded.images, frames):
        got = image.permute(1, 2, 0).numpy().astype(float)
        u, v = m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        inside = (u >= 0) & (u <= SIZE - 1) & (v >= 0) & (v <= SIZE - 1)
        outside = (u < -1) | (u > SIZE) | (v < -1) | (v > SIZE)
        assert np.abs(got - want)[inside].mean() < 1.0 and np.abs(got - want)[inside].max() <= 8
        assert (got[outside] == 0).all()
    assert outside.sum() > 500  # the last face leaves its image: the border is black


def test_alignment_matches_opencv_warp_of_the_insightface_matrix(layout):
    cv2 = pytest.importorskip("cv2")
    root, frames, _ = layout
    loaded = load_all_images(root, "IJBC")
    for (image, _, _), m, got in zip(IMAGES, frames, loaded.images):
        bgr = cv2.imread(str(root / "loose_crop" / image))
        want = cv2.cvtColor(cv2.warpAffine(bgr, invert(m), (112, 112), borderValue=0.0), cv2.COLOR_BGR2RGB)
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.2


def test_missing_image_is_an_error_naming_it_and_its_line(layout):
    root = layout[0]
    (root / "loose_crop" / "3.jpg").unlink()
    with pytest.raises(DataError, match=r"3\.jpg \(listed at .*ijbc_name_5pts_score\.txt:3\): cannot read"):
        load_all_images(root, "IJBC")


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_image_is_an_error(layout, content):
    root = layout[0]
    path = root / "loose_crop" / "4.jpg"
    path.write_bytes(path.read_bytes()[:300] if content == "truncated" else content)
    with pytest.raises(DataError, match=r"4\.jpg \(listed at .*_5pts_score\.txt:4\): cannot decode image"):
        load_all_images(root, "IJBC")


def break_two_images(root):
    """Template 3 loses its only image (5.jpg); template 1 keeps 1.jpg of two (2.jpg corrupt)."""
    (root / "loose_crop" / "5.jpg").unlink()
    (root / "loose_crop" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")


def test_skip_mode_lists_failures_and_streams_in_order(layout):
    root = layout[0]
    complete = load_all_images(root, "IJBC")
    break_two_images(root)
    loaded = load_all_images(root, "IJBC", on_error="skip")
    assert loaded.indices.tolist() == [0, 2, 3, 5]
    assert [row for row, _ in loaded.failures] == [1, 4]
    assert "2.jpg" in loaded.failures[0][1] and "cannot decode" in loaded.failures[0][1]
    assert "5.jpg" in loaded.failures[1][1] and "cannot read" in loaded.failures[1][1]
    torch.testing.assert_close(loaded.images, complete.images[[0, 2, 3, 5]])
    np.testing.assert_array_equal(loaded.templates, [1, 2, 2, 4])

    chunks = list(iter_ijb_chunks(loaded.meta, chunk_size=2, num_workers=1, on_error="skip", progress=False))
    assert [c.indices.tolist() for c in chunks] == [[0], [2, 3], [5]]
    assert [[row for row, _ in c.failures] for c in chunks] == [[1], [], [4]]
    torch.testing.assert_close(torch.cat([c.images for c in chunks]), loaded.images)
    with pytest.raises(ValueError, match="on_error must be one of"):
        next(iter_ijb_chunks(loaded.meta, on_error="ignore"))


def test_verification_skips_the_pairs_of_templates_left_without_images(layout):
    root = layout[0]
    break_two_images(root)
    model = tiny_model()
    with pytest.raises(DataError, match=r"2\.jpg"):
        ijb_verification(model, root, "IJBC", progress=False)
    result = ijb_verification(model, root, "IJBC", on_error="skip", progress=False, chunk_size=4)
    assert [name for name, _ in result["failed_images"]] == ["2.jpg", "5.jpg"]
    assert result["skipped_pairs"] == 3 and result["missing_templates"].tolist() == [3]
    np.testing.assert_array_equal(result["scored"], [3 not in (a, b) for a, b, _ in PAIRS])
    assert (result["num_pairs"], result["num_genuine"], result["num_images"], result["num_templates"]) == (3, 1, 4, 3)


def test_skipping_too_much_to_evaluate_is_a_run_error(layout):
    root = layout[0]
    for image in ("5.jpg", "6.jpg"):  # templates 3 and 4: only the genuine pair (1, 2) is left
        (root / "loose_crop" / image).unlink()
    with pytest.raises(RunError, match=r"5 of 6 pairs name templates without images: the 1 left hold 1 genuine"):
        ijb_verification(tiny_model(), root, "IJBC", on_error="skip", progress=False)
    for image, _, _ in IMAGES[:4]:
        (root / "loose_crop" / image).write_bytes(b"broken")
    with pytest.raises(RunError, match=r"loose_crop: no image of IJBC could be loaded \(6 failed, first: .*1\.jpg"):
        embed_ijb(tiny_model(), load_ijb_meta(root, "IJBC"), on_error="skip", progress=False)


def test_embed_and_verification_use_the_raw_outputs_of_the_faces_and_their_flips(layout):
    root, _, faceness = layout
    model = tiny_model()
    meta = load_ijb_meta(root, "IJBC")
    embedded = embed_ijb(model, meta, batch_size=3, chunk_size=4, progress=False)
    x = normalize(load_all_images(root, "IJBC").images)
    with torch.no_grad():
        plain, flipped = model(x).numpy(), model(torch.flip(x, dims=[3])).numpy()
    assert embedded.indices.tolist() == list(range(6)) and embedded.failures == []
    np.testing.assert_allclose(embedded.features, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedded.flipped, flipped, rtol=1e-5, atol=1e-6)
    assert np.abs(plain - flipped).max() > 1e-3 and np.abs(np.linalg.norm(plain, axis=1) - 1).max() > 1e-2
    assert embed_ijb(model, meta, flip=False, progress=False).flipped is None

    result = ijb_verification(model, root, "IJBC", progress=False)
    want = evaluate_ijb(plain, flipped, faceness, meta.templates, meta.medias, meta.pairs, meta.labels)
    assert result["set"] == "IJBC" and result["failed_images"] == []
    np.testing.assert_allclose(result["scores"], want["scores"], atol=1e-6)
    assert result["tar_at_far"] == want["tar_at_far"]


def edit(lines, row, text):
    return lines[:row] + [text] + lines[row + 1 :]


MALFORMED = [
    ("face_tid_mid", lambda ls: edit(ls, 1, "2.jpg 1"), r"ijbc_face_tid_mid\.txt:2: expected 3 fields"),
    ("face_tid_mid", lambda ls: edit(ls, 1, "2.jpg x 10"), r"ijbc_face_tid_mid\.txt:2: template_id must be an integer"),
    ("name_5pts_score", lambda ls: edit(ls, 3, ls[3].rsplit(" ", 1)[0]), r"_5pts_score\.txt:4: expected 12 fields"),
    ("name_5pts_score", lambda ls: edit(ls, 3, ls[3].replace(" ", " abc ", 1).rsplit(" ", 1)[0]),
     r"_5pts_score\.txt:4: x1 must be a number, got 'abc'"),
    ("name_5pts_score", lambda ls: edit(ls, 0, ls[0].rsplit(" ", 1)[0] + " nan"), r"_5pts_score\.txt:1: .* finite"),
    ("name_5pts_score", lambda ls: ls[:-1], r"face_tid_mid\.txt lists 6 images but .*_5pts_score\.txt lists 5"),
    ("name_5pts_score", lambda ls: ["", *edit(ls, 2, "x.jpg" + ls[2][5:])],
     r"face_tid_mid\.txt:3 names image '3\.jpg' but .*_5pts_score\.txt:4 names 'x\.jpg'"),
    ("template_pair_label", lambda ls: edit(ls, 2, "1 x 0"), r"pair_label\.txt:3: template_2 must be an integer"),
    ("template_pair_label", lambda ls: edit(ls, 2, "1 3"), r"pair_label\.txt:3: expected 3 fields"),
    ("template_pair_label", lambda ls: [" ".join(line.split()[:2]) for line in ls],
     r"pair_label\.txt:1: expected 3 fields"),
    ("template_pair_label", lambda ls: ["", *edit(ls, 3, "3 4 2")], r"pair_label\.txt:5: label must be 0 or 1, got 2"),
    ("template_pair_label", lambda ls: edit(ls, 1, "1 99 0"), r"pair_label\.txt:2: template 99 is not in .*tid_mid"),
    ("template_pair_label", lambda ls: [], r"pair_label\.txt: no pairs listed"),
    ("template_pair_label", lambda ls: edit(ls, 1, "1 2 99999999999999999999"),
     r"pair_label\.txt: not a table of 64-bit integers \(could not convert string '99999999999999999999'"),
    ("template_pair_label", lambda ls: [line for line in ls if line.endswith("1")],
     r"pair_label\.txt: all 2 pairs are genuine"),
    ("name_5pts_score", lambda ls: edit(ls, 4, " ".join(["5.jpg", *["7.5"] * 10, "0.9"])),
     r"_5pts_score\.txt:5: the five landmarks coincide at \[7\.5, 7\.5\]"),
    ("face_tid_mid", lambda ls: edit(ls, 2, "3\udcff.jpg 2 11"), r"ijbc_face_tid_mid\.txt: not UTF-8 text"),
]


@pytest.mark.parametrize("key,change,message", MALFORMED)
def test_malformed_meta_lines_are_errors_naming_file_and_line(layout, key, change, message):
    root = layout[0]
    path = ijb_paths(root, "IJBC")[key]
    path.write_text("".join(line + "\n" for line in change(path.read_text().splitlines())),
                    errors="surrogateescape")  # writes a lone surrogate as the byte it escapes (not UTF-8)
    with pytest.raises(DataError, match=message):
        load_ijb_meta(root, "IJBC")


def test_missing_meta_file_is_named(layout):
    root = layout[0]
    path = ijb_paths(root, "IJBC")["template_pair_label"]
    path.unlink()
    with pytest.raises(InputNotFoundError, match=re.escape(str(path))):
        load_ijb_meta(root, "IJBC")
