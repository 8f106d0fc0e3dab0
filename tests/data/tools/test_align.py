import numpy as np
import pytest
from PIL import Image
from scipy.optimize import least_squares

from otface.data.tools.align import (
    ARCFACE_TEMPLATE,
    align_face,
    align_folder,
    alignment_matrix,
    estimate_similarity,
    is_mirrored,
    read_landmarks,
    template,
    warp_affine,
)
from otface.errors import ConfigError, DataError


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_estimate_recovers_an_exact_similarity():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5), *rng.uniform(-100, 100, 2))
        src = rng.uniform(0, 200, (5, 2))
        np.testing.assert_allclose(estimate_similarity(src, _apply(truth, src)), truth, atol=1e-9)


def test_estimate_is_the_least_squares_similarity():
    rng = np.random.default_rng(1)
    for _ in range(10):
        src = rng.uniform(0, 200, (5, 2))
        dst = _apply(_similarity(0.3, 0.7, 10, -4), src) + rng.normal(0, 5, (5, 2))

        def residual(p):
            a, b, tx, ty = p
            return (_apply(np.array([[a, -b, tx], [b, a, ty]]), src) - dst).ravel()

        a, b, tx, ty = least_squares(residual, x0=[1.0, 0.0, 0.0, 0.0], xtol=1e-14, ftol=1e-14).x
        np.testing.assert_allclose(estimate_similarity(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-6)


def test_estimate_never_reflects():
    src = ARCFACE_TEMPLATE
    mirrored = src * [-1, 1]  # the best orthogonal fit is a reflection; a rotation must be returned
    m = estimate_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    np.testing.assert_allclose(m[0, 0], m[1, 1])
    np.testing.assert_allclose(m[0, 1], -m[1, 0])


def test_estimate_rejects_bad_points():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="one shape"):
        estimate_similarity(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE[:4])
    with pytest.raises(ValueError, match="NaN"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        alignment_matrix(ARCFACE_TEMPLATE[:4])


def test_template_sizes_follow_insightface():
    np.testing.assert_array_equal(template(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template(224), 2 * ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template(128), ARCFACE_TEMPLATE + [8.0, 0.0])
    np.testing.assert_allclose(alignment_matrix(ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_warp_integer_translation_is_a_shift_with_black_border():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = warp_affine(image, np.array([[1.0, 0, 3], [0, 1.0, -2]]), (20, 30))
    expected = np.zeros_like(image)
    expected[:18, 3:] = image[2:, :27]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(warp_affine(image[..., 0], np.eye(2, 3), (20, 30)), image[..., 0])


def test_warp_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (150, 120, 3), dtype=np.uint8), (5, 5), 2)
    for _ in range(5):
        m = _similarity(rng.uniform(-0.5, 0.5), rng.uniform(0.6, 1.4), *rng.uniform(-20, 20, 2))
        ours = warp_affine(image, m, (112, 112)).astype(int)
        theirs = cv2.warpAffine(image, m, (112, 112), borderValue=0.0).astype(int)
        diff = np.abs(ours - theirs)
        assert diff.max() <= 3 and diff.mean() < 0.5  # OpenCV rounds coordinates to 1/32 pixel


def test_align_face_puts_the_landmarks_on_the_template():
    rng = np.random.default_rng(4)
    truth = _similarity(0.4, 2.5, 40, 10)  # template -> photo
    landmarks = _apply(truth, ARCFACE_TEMPLATE)
    photo = np.zeros((400, 400, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:400, 0:400]
    for k, (x, y) in enumerate(landmarks):  # a bright disc per landmark, one colour channel each
        photo[(xs - x) ** 2 + (ys - y) ** 2 <= 36, k % 3] = 255
    aligned = align_face(photo, landmarks + rng.normal(0, 0.01, (5, 2)))
    assert aligned.shape == (112, 112, 3)
    for k, (x, y) in enumerate(ARCFACE_TEMPLATE):  # each disc's centroid lands on its template point
        patch = np.zeros((112, 112))
        near = (xs[:112, :112] - x) ** 2 + (ys[:112, :112] - y) ** 2 <= 16
        patch[near] = aligned[..., k % 3][near]
        cy, cx = (np.argwhere(patch > 0) * patch[patch > 0][:, None]).sum(0) / patch.sum()
        assert abs(cx - x) < 0.3 and abs(cy - y) < 0.3


def _photo_with_landmarks(rng):
    """A 160x140 photo whose five landmark spots are bright, and those landmarks."""
    truth = _similarity(rng.uniform(-0.3, 0.3), rng.uniform(1.0, 1.3), *rng.uniform(0, 15, 2))
    landmarks = _apply(truth, ARCFACE_TEMPLATE)
    photo = np.full((160, 140, 3), 30, dtype=np.uint8)
    for x, y in landmarks:
        photo[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3] = 250
    return photo, landmarks


def test_align_folder_writes_aligned_crops_and_names_bad_photos(tmp_path):
    rng = np.random.default_rng(5)
    lines = []
    photos = {}
    for name in ("anna/1.png", "anna/2.png", "bob/1.png"):
        photo, landmarks = _photo_with_landmarks(rng)
        (tmp_path / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(tmp_path / "raw" / name)
        photos[name] = (photo, landmarks)
        lines.append(name + " " + " ".join(f"{v:.3f}" for v in landmarks.ravel()) + " 0.99")
    (tmp_path / "lm.txt").write_text("\n".join(lines) + "\n\n")
    written, skipped = align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "out", progress=False)
    assert (written, skipped) == (3, [])
    for name, (photo, landmarks) in photos.items():
        crop = np.asarray(Image.open((tmp_path / "out" / name).with_suffix(".jpg")))
        expected = align_face(photo, np.round(landmarks, 3))
        assert crop.shape == (112, 112, 3) and np.abs(crop.astype(int) - expected).mean() < 2  # JPEG q95

    (tmp_path / "lm.txt").write_text(lines[0] + "\nmissing/3.png" + lines[1][len("anna/2.png"):] + "\n")
    with pytest.raises(ValueError, match=r"missing/3\.png"):
        align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "out2", progress=False)
    written, skipped = align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "out3", on_error="skip",
                                    progress=False)
    assert written == 1 and [name for name, _ in skipped] == ["missing/3.png"]


@pytest.mark.parametrize("text,message", [
    ("a.jpg 1 2 3\n", "3 fields|4 fields"),
    ("a.jpg " + "x " * 10 + "\n", "must be numbers"),
    ("a.jpg " + "nan " * 10 + "\n", "finite"),
    ("\n", "no landmarks"),
])
def test_read_landmarks_rejects_malformed_files(tmp_path, text, message):
    (tmp_path / "lm.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_landmarks(tmp_path / "lm.txt")


def _landmark_line(name, landmarks):
    return name + " " + " ".join(f"{v:.3f}" for v in np.asarray(landmarks).ravel())


def _photo_folder(tmp_path, names, seed=7):
    rng = np.random.default_rng(seed)
    lines = []
    for name in names:
        photo, landmarks = _photo_with_landmarks(rng)
        (tmp_path / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(tmp_path / "raw" / name)
        lines.append((name, landmarks))
    return lines


@pytest.mark.parametrize("listed", ["ABS", "../raw/anna/1.png", "anna/../../raw/anna/1.png"])
def test_a_path_that_leaves_the_photo_folder_is_an_error_and_nothing_is_written(tmp_path, listed):
    (name, landmarks), = _photo_folder(tmp_path, ["anna/1.png"])
    original = (tmp_path / "raw" / name).read_bytes()
    listed = str(tmp_path / "raw" / name) if listed == "ABS" else listed
    (tmp_path / "lm.txt").write_text(_landmark_line(name, landmarks) + "\n" + _landmark_line(listed, landmarks) + "\n")
    with pytest.raises(DataError, match=r"lm.txt:2: path .* leaves the photo folder"):
        align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "raw" / "anna", progress=False)
    assert (tmp_path / "raw" / name).read_bytes() == original
    assert sorted(p.name for p in (tmp_path / "raw" / "anna").iterdir()) == ["1.png"]


def test_outputs_never_replace_photos_nor_each_other(tmp_path):
    lines = _photo_folder(tmp_path, ["x.jpg", "x.png", "out/x.jpg"])
    text = "\n".join(_landmark_line(n, lm) for n, lm in lines) + "\n"
    (tmp_path / "lm.txt").write_text(text)
    with pytest.raises(DataError, match=r"lm.txt:2: 'x.png' and line 1 \('x.jpg'\) would both be written"):
        align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "aligned", progress=False)
    (tmp_path / "lm.txt").write_text("\n".join(_landmark_line(n, lm) for n, lm in lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"lm.txt:1: the crop of 'x.png' would overwrite a listed photo"):
        align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "raw" / "out", progress=False)
    with pytest.raises(ConfigError, match="is the photo folder"):
        align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "raw" / ".", progress=False)
    assert not (tmp_path / "aligned").exists()


def test_paths_with_spaces_and_line_numbers_in_errors(tmp_path):
    (name, landmarks), = _photo_folder(tmp_path, ["ann smith/photo 1.png"])
    (tmp_path / "lm.txt").write_text("\n" + _landmark_line(name, landmarks) + " 0.98\n")
    entries = read_landmarks(tmp_path / "lm.txt")
    assert [(e.name, e.lineno) for e in entries] == [(name, 2)]
    np.testing.assert_allclose(entries[0].points, np.round(landmarks, 3))
    assert align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "out", progress=False) == (1, [])
    assert (tmp_path / "out" / "ann smith" / "photo 1.jpg").is_file()

    (tmp_path / "lm.txt").write_text(_landmark_line("a.jpg", landmarks) + " 0.9\n" + _landmark_line("b.jpg", landmarks)
                                     + "\n")
    with pytest.raises(DataError, match=r"lm.txt:2: expected .* 11 numbers"):  # the score column is the file's
        read_landmarks(tmp_path / "lm.txt")
    (tmp_path / "lm.txt").write_text("a.jpg" + " 5.0" * 10 + "\n")
    with pytest.raises(DataError, match=r"lm.txt:1: the five landmarks of 'a.jpg' coincide"):
        read_landmarks(tmp_path / "lm.txt")


def test_mirrored_order_and_points_outside_the_photo_are_warned_about(tmp_path, caplog):
    (name, landmarks), = _photo_folder(tmp_path, ["a.png"])
    mirrored = landmarks[[1, 0, 2, 4, 3]]  # the person's left eye first: the mirrored order
    outside = landmarks + [0, 150]
    text = "\n".join(_landmark_line(n, lm) for n, lm in [(name, landmarks), ("b.png", mirrored), ("c.png", outside)])
    for other in ("b.png", "c.png"):
        (tmp_path / "raw" / other).write_bytes((tmp_path / "raw" / name).read_bytes())
    (tmp_path / "lm.txt").write_text(text + "\n")
    with caplog.at_level("WARNING", logger="otface.data"):
        assert align_folder(tmp_path / "raw", tmp_path / "lm.txt", tmp_path / "out", progress=False)[0] == 3
    warned = {r.getMessage().split(" (listed")[0].rsplit("/", 1)[-1]: r.getMessage() for r in caplog.records}
    assert set(warned) == {"b.png", "c.png"}
    assert "lm.txt:2" in warned["b.png"] and "mirrored order" in warned["b.png"]
    assert "lm.txt:3" in warned["c.png"] and "outside the 140x160 photo" in warned["c.png"]


def test_is_mirrored_tells_the_order_under_any_similarity():
    rng = np.random.default_rng(3)
    swapped = ARCFACE_TEMPLATE[[1, 0, 2, 4, 3]]  # eyes and mouth corners exchanged: the mirrored order
    for _ in range(20):
        m = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 3), *rng.uniform(-50, 50, 2))
        assert not is_mirrored(_apply(m, ARCFACE_TEMPLATE))
        assert is_mirrored(_apply(m, swapped))


def test_a_landmarks_file_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "lm.txt").write_bytes(b"caf\xe9.jpg" + b" 1" * 10 + b"\n")
    with pytest.raises(DataError, match=r"lm.txt: not UTF-8 text"):
        read_landmarks(tmp_path / "lm.txt")
