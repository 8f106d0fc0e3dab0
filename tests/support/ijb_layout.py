"""A tiny IJB release written by the tests: aligned faces drawn into loose crops by known similarities."""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from otface.data.testpacks.ijb import IJBMeta, iter_ijb_chunks, load_ijb_meta
from otface.data.tools.align import ARCFACE_TEMPLATE

SIZE = 160
IMAGES = [("1.jpg", 1, 10), ("2.jpg", 1, 10), ("3.jpg", 2, 11), ("4.jpg", 2, 12), ("5.jpg", 3, 13), ("6.jpg", 4, 14)]
PAIRS = [(1, 2, 1), (1, 3, 0), (2, 3, 0), (3, 4, 1), (1, 4, 0), (2, 4, 0)]


def face(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth RGB picture (..., 3) over the aligned 112x112 frame, defined everywhere."""
    return np.stack([128 + 70 * np.sin(x / 9.0 + 0.5 * c) * np.cos(y / 13.0 - c) + 20 * np.cos((x + y) / 17.0 + c)
                     for c in range(3)], -1)


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def invert(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]


def write_layout(root, name="ijbc"):
    """A tiny IJB release: the aligned face drawn into 160x160 JPEGs by random similarities (the
    last one leaves the image partly), landmarks the template mapped by them. Returns the
    similarities (aligned frame -> image) and faceness scores."""
    rng = np.random.default_rng(0)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    frames, faceness, lines = [], rng.uniform(0.5, 1.0, len(IMAGES)), []
    for k, (image, _, _) in enumerate(IMAGES):
        centre = (35.0, 40.0) if k == len(IMAGES) - 1 else rng.uniform(70, 90, 2)
        m = similarity(rng.uniform(-0.3, 0.3), rng.uniform(1.1, 1.3), 0.0, 0.0)
        m[:, 2] = centre - m[:, :2] @ [56.0, 56.0]
        ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(float)
        inv = invert(m)
        pixels = face(inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2])
        Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(
            root / "loose_crop" / image, quality=95, subsampling=0)
        landmarks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
        lines.append(" ".join([image, *(f"{v:.4f}" for v in landmarks.ravel()), f"{faceness[k]:.6f}"]))
        frames.append(m)
    meta = root / "meta"
    (meta / f"{name}_face_tid_mid.txt").write_text("".join(f"{i} {t} {m}\n" for i, t, m in IMAGES))
    (meta / f"{name}_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    (meta / f"{name}_template_pair_label.txt").write_text("".join(f"{a} {b} {label}\n" for a, b, label in PAIRS))
    return frames, faceness.astype(np.float32)


@dataclass
class LoadedImages:
    """All aligned faces of a small IJB layout that loaded (N' of the N meta images)."""

    meta: IJBMeta
    indices: np.ndarray  # (N',) int64 rows of the meta lists
    images: torch.Tensor  # (N', 3, 112, 112) uint8 RGB
    failures: list[tuple[int, str]]  # (row, message) of the images left out

    @property
    def templates(self) -> np.ndarray:
        return self.meta.templates[self.indices]


def load_all_images(root, name: str, on_error: str = "raise") -> LoadedImages:
    """Every aligned face of set ``name`` under ``root`` at once, from iter_ijb_chunks (small test sets only)."""
    meta = load_ijb_meta(root, name)
    chunks = list(iter_ijb_chunks(meta, on_error=on_error, progress=False))
    return LoadedImages(meta, np.concatenate([c.indices for c in chunks]), torch.cat([c.images for c in chunks]),
                        [failure for c in chunks for failure in c.failures])
