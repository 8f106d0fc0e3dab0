import numpy as np
import pytest
from PIL import Image
from scipy.optimize import least_squares

from otface.data.align import (
    ARCFACE_TEMPLATE,
    align_face,
    align_folder,
    alignment_matrix,
    estimate_similarity,
    read_landmarks,
    template,
    warp_affine,
)


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
