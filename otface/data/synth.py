"""Synthetic faces (SPEC §8): a miniature MS1M for training and miniature LFW / CPLFW protocols.

An *identity* is a vector of genes in [0, 1] (face shape, skin, eyes, brows, nose, mouth, ears,
hair, facial hair, skin texture, spectacles) plus the seed of its freckle and mole pattern. A
*nuisance* is everything that changes between two photos of the same person: pose (yaw, pitch,
roll), scale and position, expression, gaze, illumination (direction, strength, colour cast,
gamma), occlusion (sunglasses, mask, cap, hand, object), background and clothes, blur, low
resolution, noise and JPEG quality.

Rendering treats the head as a stack of horizontal cross-sections (circles whose radius follows
the face outline, pushed forward below the cheekbones so the jaw and chin protrude). Features are
points on that surface (plus a protrusion for the nose and lips), rotated by yaw and pitch and
then by roll, scale and shift, so turning the head shifts and foreshortens the features towards
one side and shows more of the other cheek. Drawing happens at 2x and is box-downsampled; the
result is a ``size`` x ``size`` RGB image, stored as JPEG.

Data set (``generate_synthetic``): ``train.rec``/``train.idx``/``property`` in insightface layout
with ``num_identities`` x ``images_per_identity`` images at the "train" level, and two
verification sets on identities disjoint from the training ones (their own seed streams):

- ``synth_easy.bin`` (like LFW): mild nuisance, negatives are two unrelated identities;
- ``synth_hard.bin`` (like CPLFW): large pose with the two images of every pair turned to
  opposite sides, occlusion, harsh light, blur, low resolution and heavy JPEG; negatives pair
  two unrelated identities as in "easy", so the extra difficulty lies in the photos alone.

Pairs alternate genuine / impostor, so every one of 10 contiguous folds is balanced. Every image
is a pure function of (seed, split, identity or pair, image index): the output is byte-identical
for any number of worker processes.
"""

from __future__ import annotations

import functools
import io
import json
import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from otface.data.binset import write_bin
from otface.data.recordio import write_face_dataset
from otface.data.staging import staged_files
from otface.errors import ConfigError
from otface.progress import progress_bar

FORMAT_VERSION = 2
LEVELS = ("train", "easy", "hard")
SUPERSAMPLE = 2

# Seed streams: every random draw comes from np.random.default_rng([seed, stream, split, ...]).
_STREAM_IDENTITY, _STREAM_IMAGE = 0, 1
_SPLITS = {"train": 0, "easy": 1, "hard": 2}

GENES = (
    # face shape
    "face_width", "face_length", "jaw_square", "chin_width", "crown",
    # skin
    "skin_tone", "skin_hue", "blush",
    # eyes
    "eye_spacing", "eye_height", "eye_size", "eye_open", "eye_tilt", "eye_round", "iris_color",
    "iris_size", "eyelid_crease",
    # brows
    "brow_thickness", "brow_gap", "brow_arch", "brow_length", "brow_tilt", "brow_shade",
    # nose
    "nose_length", "nose_width", "nose_protrusion", "nostril_size",
    # mouth
    "mouth_height", "mouth_width", "upper_lip", "lower_lip", "lip_color", "cupid_bow",
    # ears
    "ear_size", "ear_out",
    # hair
    "hair_style", "hair_color", "hairline", "hair_volume", "hair_part", "hair_length",
    # facial hair, texture, age, spectacles
    "beard_style", "beard_density", "freckles", "moles", "age", "glasses", "glasses_style",
)
_G = {name: i for i, name in enumerate(GENES)}

_HAIR_STYLES = ("bald", "buzz", "short", "side_part", "fringe", "bob", "long", "curly", "bun", "receding")
_HAIR_STYLE_P = np.array([0.05, 0.08, 0.18, 0.14, 0.1, 0.1, 0.14, 0.08, 0.06, 0.07])
_BEARDS = ("none", "moustache", "goatee", "full", "stubble")
_BEARD_P = np.array([0.62, 0.1, 0.08, 0.14, 0.06])

_SKIN = np.array([(66, 42, 32), (104, 68, 46), (146, 98, 68), (186, 136, 100), (222, 176, 146),
                  (246, 214, 194)], float)
_HAIR = np.array([(22, 20, 20), (50, 34, 26), (92, 62, 38), (128, 62, 32), (176, 96, 44), (196, 160, 96),
                  (228, 204, 150), (140, 138, 136), (222, 220, 216)], float)
_HAIR_P = np.array([0.26, 0.22, 0.15, 0.07, 0.05, 0.08, 0.05, 0.08, 0.04])
_IRIS = np.array([(52, 30, 18), (96, 58, 30), (118, 96, 48), (66, 110, 70), (62, 104, 168),
                  (112, 124, 136)], float)
_IRIS_P = np.array([0.35, 0.2, 0.12, 0.1, 0.15, 0.08])


@dataclass(eq=False)
class Identity:
    """A synthetic person: genes in [0, 1] (``GENES`` order) and the seed of its skin marks."""

    genes: np.ndarray
    texture_seed: int

    def __getitem__(self, name: str) -> float:
        """The gene called ``name`` (see ``GENES``)."""
        return float(self.genes[_G[name]])


@dataclass
class Nuisance:
    """What differs between two photos of one identity.

    Angles in degrees (yaw > 0 turns the face towards the image's right); ``scale`` relative;
    shifts, ``blur`` (box-filter radius) in pixels of a 112-pixel image; ``lowres`` the factor of
    a down-and-up resampling; ``noise`` the standard deviation in grey levels; expression values
    roughly in [-1, 1] (``eye_open`` 1 = normal); ``cast`` per-channel gains; ``occlusion`` one of
    "none", "sunglasses", "mask", "cap", "hand", "object"; spectacles are worn when ``accessory``
    < the identity's ``glasses`` gene; ``detail_seed`` draws background, clothes, occluder and
    noise.
    """

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    smile: float = 0.0
    mouth_open: float = 0.0
    brow_raise: float = 0.0
    eye_open: float = 1.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    light_angle: float = 0.0
    light_strength: float = 0.0
    ambient: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    occlusion: str = "none"
    blur: float = 0.0
    lowres: float = 1.0
    noise: float = 0.0
    jpeg_quality: int = 95
    accessory: float = 1.0
    detail_seed: int = 0


# ----------------------------------------------------------------------------------------------
# Sampling


def _category_gene(u: float, p: np.ndarray) -> float:
    """Map a uniform ``u`` to a gene whose category (see ``_pick``) has probabilities ``p``: the
    category by inverse CDF, the position inside it uniform."""
    cdf = np.cumsum(p / p.sum())
    k = min(int(np.searchsorted(cdf, u, side="right")), len(p) - 1)
    low = cdf[k - 1] if k else 0.0
    return (k + min((u - low) / (cdf[k] - low), 1.0 - 1e-9)) / len(p)


def _pick(gene: float, n: int) -> int:
    """Category of a gene among n equal slices of [0, 1]."""
    return min(int(gene * n), n - 1)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity: uniform genes, except categories (hair style and colour, iris
    colour, beard) drawn with unequal frequencies, freckles absent for most people, and a habit
    of wearing spectacles that is rare."""
    genes = rng.random(len(GENES))
    for name, p in (("hair_style", _HAIR_STYLE_P), ("hair_color", _HAIR_P), ("iris_color", _IRIS_P),
                    ("beard_style", _BEARD_P)):
        genes[_G[name]] = _category_gene(genes[_G[name]], p)
    genes[_G["freckles"]] = max(0.0, genes[_G["freckles"]] * 1.6 - 0.6)
    genes[_G["glasses"]] **= 3  # the probability of wearing them in a photo
    return Identity(genes, int(rng.integers(2**31)))


@dataclass(frozen=True)
class _Level:
    """Nuisance distribution of a difficulty level (see ``sample_nuisance``)."""

    yaw_sd: float  # degrees, normal, clipped at yaw_max ("hard": see sample_nuisance)
    yaw_max: float
    pitch_sd: float
    roll_sd: float
    scale: float  # +- relative
    shift: float  # +- pixels
    expression: float  # 0..1 strength of smiles, open mouths, raised brows, blinks
    light: tuple[float, float]  # directional light strength range
    ambient: tuple[float, float]
    cast: float  # +- per-channel gain
    gamma: float  # +- log gamma
    blur: tuple[float, float]  # (probability, max radius in pixels)
    lowres: tuple[float, float]  # (probability, max downsampling factor)
    noise: float  # max standard deviation, grey levels
    jpeg: tuple[int, int]  # quality range
    occlusion: float  # probability


_LEVELS = {
    "train": _Level(22, 60, 7, 5, 0.06, 3.0, 0.7, (0.0, 0.35), (0.85, 1.1), 0.08, 0.15, (0.3, 1.6), (0.15, 2.5),
                    7.0, (45, 95), 0.2),
    "easy": _Level(7, 18, 4, 2.5, 0.03, 1.5, 0.4, (0.0, 0.25), (0.85, 1.1), 0.03, 0.15, (0.15, 0.7), (0.0, 1.0),
                   2.5, (80, 95), 0.02),
    "hard": _Level(0, 65, 10, 7, 0.08, 4.0, 1.0, (0.2, 0.55), (0.65, 1.15), 0.12, 0.3, (0.5, 1.8), (0.35, 2.5),
                   10.0, (30, 75), 0.4),
}
_OCCLUSIONS = ("sunglasses", "mask", "cap", "hand", "object")
_OCCLUSION_CDF = np.cumsum([0.25, 0.25, 0.15, 0.2, 0.15])


def sample_nuisance(rng: np.random.Generator, level: str = "train") -> Nuisance:
    """Draw the nuisance of one image at difficulty ``level``.

    "easy" (like LFW): near-frontal, mild expression and light, rare occlusion, little blur or
    noise, high JPEG quality. "hard" (like CPLFW): 35-65 degrees of yaw to a random side (a
    quarter of the images near-frontal), strong expression, harsh coloured light, 40 %
    occluded, frequent blur / low resolution, noise, low JPEG quality. "train": in between, so
    that a model sees every condition of the test levels.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    p = _LEVELS[level]
    u = rng.random(24).tolist()  # one draw per field, then transformed: cheap and reproducible
    z = rng.standard_normal(5).tolist()
    if level == "hard":
        yaw = 15 * u[0] if u[1] < 0.25 else 35 + (p.yaw_max - 35) * u[0]
        yaw *= 1.0 if u[2] < 0.5 else -1.0
    else:
        yaw = min(max(p.yaw_sd * z[0], -p.yaw_max), p.yaw_max)
    e = p.expression
    smile = min(max(0.15 + 0.45 * e * z[1], -0.4), 1.0)
    sym = [2 * v - 1 for v in u]  # uniform in [-1, 1]
    occlusion = "none"
    if u[3] < p.occlusion:
        k = int(np.searchsorted(_OCCLUSION_CDF, u[4], side="right"))
        occlusion = _OCCLUSIONS[min(k, len(_OCCLUSIONS) - 1)]
    return Nuisance(
        yaw=yaw,
        pitch=p.pitch_sd * z[2],
        roll=p.roll_sd * z[3],
        scale=1.0 + sym[5] * p.scale,
        shift_x=sym[6] * p.shift,
        shift_y=sym[7] * p.shift,
        smile=smile,
        mouth_open=max(0.0, (2.2 * u[8] - 1.2) * e),
        brow_raise=sym[9] * e,
        eye_open=min(max(1.0 + 0.25 * e * z[4] - 0.25 * max(smile, 0.0), 0.15), 1.3),
        gaze_x=0.5 * sym[10],
        gaze_y=0.3 * sym[11],
        light_angle=2 * math.pi * u[12],
        light_strength=p.light[0] + (p.light[1] - p.light[0]) * u[13],
        ambient=p.ambient[0] + (p.ambient[1] - p.ambient[0]) * u[14],
        cast=(1.0 + sym[15] * p.cast, 1.0 + sym[16] * p.cast, 1.0 + sym[17] * p.cast),
        gamma=math.exp(sym[18] * p.gamma),
        occlusion=occlusion,
        blur=p.blur[1] * u[20] if u[19] < p.blur[0] else 0.0,
        lowres=1.0 + (p.lowres[1] - 1.0) * u[22] if u[21] < p.lowres[0] else 1.0,
        noise=p.noise * u[23],
        jpeg_quality=int(rng.integers(p.jpeg[0], p.jpeg[1] + 1)),
        accessory=float(rng.random()),
        detail_seed=int(rng.integers(2**31)),
    )


# ----------------------------------------------------------------------------------------------
# Rendering


def _mix(a: np.ndarray | tuple, b: np.ndarray | tuple, t: float) -> np.ndarray:
    return np.asarray(a, float) * (1.0 - t) + np.asarray(b, float) * t


def _palette(table: np.ndarray, gene: float) -> np.ndarray:
    """Colour of a categorical gene: its category's colour, brightened or darkened by up to 10 %
    according to the gene's position inside the category."""
    k = _pick(gene, len(table))
    return table[k] * (0.9 + 0.2 * (gene * len(table) - k))


def _lerp(gene: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * gene


def _bezier(p0, p1, p2, p3, n: int) -> np.ndarray:
    """(n, 2) points of the cubic Bezier curve with control points p0..p3."""
    t = _unit(n)[:, None]
    p = [np.asarray(q, float) for q in (p0, p1, p2, p3)]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


@functools.lru_cache(maxsize=None)
def _unit(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


def _lin(a: float, b: float, n: int) -> np.ndarray:
    """``np.linspace(a, b, n)``, faster for the small n used here."""
    return a + (b - a) * _unit(n)


def _loop(x: np.ndarray, y_top: np.ndarray, y_bottom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed outline between two curves over the same x: along the top, back along the bottom."""
    return np.concatenate([x, x[::-1]]), np.concatenate([y_top, y_bottom[::-1]])


def _part(x0, y, dz=0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A set of surface points: frontal x0, height y, protrusion dz, as equal-length arrays."""
    if isinstance(x0, np.ndarray) and isinstance(y, np.ndarray) and len(x0) == len(y) and np.isscalar(dz):
        return x0, y, np.full(len(x0), float(dz))
    arrays = [np.asarray(v, float).ravel() for v in (x0, y, dz)]
    lengths = [len(a) for a in arrays]
    n = max(lengths) if min(lengths) else 0  # scalars broadcast; an empty array empties the part
    x0, y, dz = (a if len(a) == n else np.full(n, a[0] if len(a) else 0.0) for a in arrays)
    return x0, y, dz


_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 20, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 20, endpoint=False))], 1)
_SQUIRCLE = np.sign(_CIRCLE) * np.abs(_CIRCLE) ** 0.6
_U13 = np.linspace(-1.0, 1.0, 13)
_U15 = np.linspace(-1.0, 1.0, 15)


class _Face:
    """An identity's appearance independent of the photo: head profile, colours, styles and the
    surface geometry (``parts``: name -> (x0, y, dz) in head units, see ``_Painter``) of every
    feature that expression does not move."""

    def __init__(self, ident: Identity) -> None:
        g = self.genes = ident
        # head outline: half-width r(y) from the crown (y = -crown) to the chin (y = chin_y)
        self.rc = rc = _lerp(g["face_width"], 0.95, 1.15)
        self.chin_y = _lerp(g["face_length"], 1.22, 1.45)
        self.crown = crown = _lerp(g["crown"], 1.55, 1.8)
        jaw = _lerp(g["jaw_square"], 0.25, 0.8)
        chin_w = _lerp(g["chin_width"], 0.05, 0.4)
        top = _bezier((0, -crown), (rc * 0.8, -crown), (rc * 1.02, -crown * 0.62), (rc, 0), 22)
        low = _bezier((rc, 0), (rc, jaw * self.chin_y), (chin_w + 0.2 * jaw, self.chin_y), (0, self.chin_y), 20)
        prof = np.concatenate([top, low[1:]])
        self.prof_y, self.prof_r = prof[:, 1], prof[:, 0]
        # forward offset of each cross-section: the lower face stays in the cheekbones' plane
        self.prof_z = np.where(self.prof_y > 0, np.maximum(rc - self.prof_r, 0.0), 0.0)
        self.eye_x = _lerp(g["eye_spacing"], 0.44, 0.55)
        self.eye_y = _lerp(g["eye_height"], -0.34, -0.22)
        self.eye_w = _lerp(g["eye_size"], 0.36, 0.48)
        self.nose_y = _lerp(g["nose_length"], 0.2, 0.36)
        self.mouth_y = max(_lerp(g["mouth_height"], 0.76, 0.9), self.nose_y + 0.42)
        self.mouth_w = _lerp(g["mouth_width"], 0.6, 0.85)
        self.hair_style = _HAIR_STYLES[_pick(g["hair_style"], len(_HAIR_STYLES))]
        self.hair_vol = _lerp(g["hair_volume"], 0.04, 0.16)
        self.beard = _BEARDS[_pick(g["beard_style"], len(_BEARDS))]
        self._colours()
        self.parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._skin_parts()
        self._eye_shape()
        self._nose()
        self._beard()
        self._hair()
        self.frame = ((22, 22, 22), (96, 62, 32), (150, 150, 162))[_pick(ident["glasses_style"] * 3 % 1, 3)]

    def radius(self, y: np.ndarray | float) -> np.ndarray:
        """Half-width of the head outline at height(s) y."""
        return np.interp(y, self.prof_y, self.prof_r)

    def _colours(self) -> None:
        g = self.genes
        tone = g["skin_tone"] * (len(_SKIN) - 1)
        lo = min(int(tone), len(_SKIN) - 2)
        skin = _mix(_SKIN[lo], _SKIN[lo + 1], tone - lo)
        self.skin = skin + np.array([10.0, -3.0, -9.0]) * (g["skin_hue"] - 0.5) * 2
        self.shade = self.skin * 0.9
        hair = _palette(_HAIR, g["hair_color"])
        if g["age"] > 0.8:  # greying
            hair = _mix(hair, (170, 170, 170), (g["age"] - 0.8) * 3)
        self.hair = hair
        self.brow = hair * 0.6 if hair.mean() > 130 else _mix(hair, (20, 16, 14), 0.2 + 0.5 * g["brow_shade"])
        self.iris = _palette(_IRIS, g["iris_color"])
        lip = _mix((180, 76, 80), (140, 72, 60), g["lip_color"])
        self.lip = _mix(self.skin, lip, 0.4 + 0.3 * (1 - g["skin_tone"]))

    def _skin_parts(self) -> None:
        """Lit face region, cheeks, freckles, moles, forehead lines, ears, brows."""
        g, p = self.genes, self.parts
        ys = _lin(-self.crown * 0.9, self.chin_y * 0.97, 24)
        r = self.radius(ys) * 0.93
        p["lit"] = _part(np.concatenate([r, -r[::-1]]), np.concatenate([ys, ys[::-1]]))
        if g["blush"] > 0.6:
            for name, s in (("cheek_l", -1), ("cheek_r", 1)):
                p[name] = _part(s * 0.55 + _CIRCLE[:, 0] * 0.17, 0.22 + _CIRCLE[:, 1] * 0.1)
        rng = np.random.default_rng(g.texture_seed)
        n = int(g["freckles"] * 70)
        p["freckles"] = _part(rng.normal(0, 0.32, n), rng.normal(0.05, 0.13, n))
        moles = max(_pick(g["moles"], 6) - 2, 0)
        p["moles"] = _part(rng.uniform(-0.75, 0.75, moles), rng.uniform(-0.65, 1.05, moles))
        self.age = (g["age"] - 0.55) / 0.45
        xs = _lin(-0.38, 0.38, 9)
        for k, dy in enumerate((-0.78, -0.66)[: 1 + int(self.age > 0.5)] if self.age > 0 else ()):
            p[f"wrinkle{k}"] = _part(xs, dy + 0.04 * (xs / 0.38) ** 2)
        out = _lerp(g["ear_out"], 0.03, 0.14)
        self.ear_h = _lerp(g["ear_size"], 0.3, 0.42)
        r_ear = float(self.radius(-0.08))
        p["ear_l"], p["ear_r"] = _part(-r_ear, -0.08, out + 0.05), _part(r_ear, -0.08, out + 0.05)
        w = self.eye_w * _lerp(g["brow_length"], 0.95, 1.25)
        t = _lin(0.0, 1.0, 10)  # inner -> outer end
        mid = (self.eye_y - _lerp(g["brow_gap"], 0.17, 0.27)
               - _lerp(g["brow_arch"], 0.0, 0.07) * np.sin(np.pi * np.minimum(t * 1.2, 1.0))
               + _lerp(g["brow_tilt"], -0.06, 0.08) * (t - 0.3))
        half = _lerp(g["brow_thickness"], 0.045, 0.1) * (1.0 - 0.6 * t**1.5) / 2
        for name, s in (("brow_l", -1), ("brow_r", 1)):
            p[name] = _part(*_loop(s * (self.eye_x - w * 0.45 + w * t), mid - half, mid + half), 0.01)

    def _eye_shape(self) -> None:
        """Eye and mouth geometry that expression only moves or scales, as ready arrays."""
        g = self.genes
        u = _U13
        env = np.clip(1.0 - np.abs(u) ** _lerp(g["eye_round"], 1.3, 2.4), 0.0, 1.0) ** 0.8
        self.eye_h = self.eye_w * _lerp(g["eye_open"], 0.34, 0.52)
        ir = self.iris_r = _lerp(g["iris_size"], 0.2, 0.25) * self.eye_w
        circle_x, circle_y = _CIRCLE[:, 0] * ir, _CIRCLE[:, 1] * ir
        self.eye_geom = {}
        for s in (-1.0, 1.0):
            xs = s * self.eye_x + u * self.eye_w / 2
            tilt = s * _lerp(g["eye_tilt"], -0.12, 0.2) * u * self.eye_w / 2  # outer corner up
            self.eye_geom[s] = dict(
                xs=xs, loop_x=np.concatenate([xs, xs[::-1]]), y0=self.eye_y - tilt,
                upper=0.62 * env * (1 - 0.15 * u * s), lower=0.38 * env,  # upper lid highest towards the nose
                lid=-0.06 - ir * 1.2 * env, crease=-0.04 - 0.025 * env[2:-1],
                circles=[(circle_x * k, circle_y * k) for k in (1.0, 0.86, 0.45)]
                + [(ir * 0.35 + circle_x * 0.18, -ir * 0.35 + circle_y * 0.18)],
            )
        self.eye_dz = {n: np.full(n, -0.03) for n in (26, 20, 13, 10, 9)}
        x = _U15 * self.mouth_w / 2
        self.mouth_x, self.mouth_loop_x = x, np.concatenate([x, x[::-1]])
        self.teeth_x = np.concatenate([x[3:-3], x[3:-3][::-1]])
        bulge = 1.0 - _U15**2
        self.lip_top = (-_lerp(g["upper_lip"], 0.04, 0.08) * (1 - np.abs(_U15) ** 2.2) - 0.012 * bulge
                        + _lerp(g["cupid_bow"], 0.0, 0.025) * np.exp(-((_U15 / 0.15) ** 2)))
        self.lip_bottom = _lerp(g["lower_lip"], 0.05, 0.11) * bulge
        dz = 0.05 * bulge
        self.mouth_dz, self.mouth_loop_dz = dz, np.concatenate([dz, dz[::-1]])

    def _nose(self) -> None:
        g, p = self.genes, self.parts
        w = _lerp(g["nose_width"], 0.22, 0.34)
        prot = _lerp(g["nose_protrusion"], 0.16, 0.32)
        tip = self.nose_y
        t = _lin(0.0, 1.0, 7)
        by = self.eye_y + 0.06 + (tip - self.eye_y - 0.06) * t  # bridge, top to tip
        bz = prot * t**1.6
        bx = 0.05 + (w * 0.55 - 0.05) * t**3
        wx = np.array([w * 0.9, w * 0.75, w * 0.35, 0.0])  # wing and base, right half
        wy = tip + np.array([0.02, 0.07, 0.09, 0.08])
        wz = np.array([0.04, 0.05, prot * 0.6, prot * 0.75])
        p["nose"] = _part(np.concatenate([bx, wx, -wx[-2::-1], -bx[::-1]]),
                          np.concatenate([by, wy, wy[-2::-1], by[::-1]]),
                          np.concatenate([bz * 0.6, wz, wz[-2::-1], bz[::-1] * 0.6]))
        p["nose_ridge"] = _part(0.0, by[1:], bz[1:])
        p["nose_side_l"] = _part(-bx[2:], by[2:], bz[2:] * 0.5)
        p["nose_side_r"] = _part(bx[2:], by[2:], bz[2:] * 0.5)
        p["nose_tip"] = _part(_CIRCLE[:, 0] * w * 0.35, tip + _CIRCLE[:, 1] * 0.05, prot)
        ns = _lerp(g["nostril_size"], 0.035, 0.06)
        for name, s in (("nostril_l", -1), ("nostril_r", 1)):
            p[name] = _part(s * w * 0.42 + _CIRCLE[:, 0] * ns * 1.2, tip + 0.065 + _CIRCLE[:, 1] * ns * 0.6,
                            prot * 0.5)

    def _beard(self) -> None:
        p, my, mw = self.parts, self.mouth_y, self.mouth_w
        if self.beard in ("full", "stubble"):  # jaw, then up the left cheek, over the lip, down the right
            ys = _lin(-0.05, self.chin_y + 0.03, 12)
            r = self.radius(np.minimum(ys, self.chin_y * 0.98)) + 0.02
            x = np.concatenate([r, -r[::-1], [-r[0], -0.55 * mw, 0.55 * mw, r[0]]])
            y = np.concatenate([ys, ys[::-1], [ys[0], my - 0.14, my - 0.14, ys[0]]])
            p["beard"] = _part(x, y, 0.03)
        if self.beard == "goatee":
            chin = self.chin_y
            p["goatee"] = _part(np.array([-0.35, 0.35, 0.25, 0.0, -0.25]) * mw,
                                np.array([my + 0.08, my + 0.08, chin - 0.02, chin + 0.03, chin - 0.02]), 0.03)
        if self.beard in ("moustache", "goatee", "full"):
            p["moustache"] = _part(np.array([-0.62, -0.3, 0.0, 0.3, 0.62, 0.5, 0.0, -0.5]) * mw,
                                   my + np.array([0.03, -0.11, -0.12, -0.11, 0.03, -0.01, -0.05, -0.01]), 0.06)

    def _hair(self) -> None:
        """The hair in front of the head: silhouette over the crown, temples, hairline."""
        g, p, style = self.genes, self.parts, self.hair_style
        vol = self.hair_vol
        hl = _lerp(g["hairline"], -1.0, -0.76)
        self.hair_front = self.hair
        if style == "receding":
            hl, vol = -1.25, 0.03
        elif style == "buzz":
            vol, self.hair_front = 0.02, _mix(self.skin, self.hair, 0.7)
        elif style == "curly":
            vol += 0.2
        self.hair_front_vol = vol
        self.hair_side_y = {"long": 0.35, "bob": 0.3, "curly": 0.05}.get(style, -0.2)
        x = _lin(1.0, -1.0, 17)  # hairline across the forehead, right to left
        part = 1.0 if g["hair_part"] > 0.5 else -1.0
        if style == "fringe":
            line_y = self.eye_y - 0.3 + 0.03 * np.abs(x)
        elif style == "side_part":
            line_y = hl + 0.14 * (x * part + 1) / 2 + 0.06 * np.abs(x) ** 3
        elif style == "receding":
            line_y = hl + 0.3 * x**2 - 0.25 * np.exp(-((x / 0.25) ** 2))
        else:
            line_y = hl + 0.1 * x**2
        sy = _lin(line_y[0], self.hair_side_y, 6)  # temples: from the hairline down the sides
        sr = self.radius(sy) * 0.985
        p["hairline"] = _part(np.concatenate([sr[::-1], x * self.radius(line_y) * 0.985, -sr]),
                              np.concatenate([sy[::-1], line_y, sy]), 0.015)
        if style == "side_part":
            p["hair_part"] = _part(0.45 * part, _lin(-self.crown * 0.95, hl + 0.05, 5), vol)

    @functools.cached_property
    def glasses_parts(self) -> dict[str, tuple]:
        """Spectacles (also the shape of sunglasses) on this face."""
        g, p = self.genes, {}
        kind = _pick(g["glasses_style"], 3)
        w = self.eye_w * 1.45
        h = w * (0.62, 0.8, 0.5)[kind]
        shape = _CIRCLE if kind == 1 else _SQUIRCLE
        for name, s in (("lens_l", -1), ("lens_r", 1)):
            p[name] = _part(s * self.eye_x + shape[:, 0] * w / 2, self.eye_y + 0.01 + shape[:, 1] * h / 2, 0.12)
        p["bridge"] = _part(np.array([-self.eye_x + w / 2, 0.0, self.eye_x - w / 2]), self.eye_y - 0.02, 0.14)
        r_eye = float(self.radius(self.eye_y))
        for name, s in (("arm_l", -1), ("arm_r", 1)):
            p[name] = _part(np.array([s * (self.eye_x + w / 2), s * r_eye]), np.array([self.eye_y - 0.02, -0.08]),
                            np.array([0.12, 0.05]))
        return p

    @functools.cached_property
    def mask_parts(self) -> dict[str, tuple]:
        """A face mask fitted to this face, with its ear straps."""
        p = {}
        y0 = self.nose_y - 0.1
        ys = _lin(y0, self.chin_y + 0.04, 10)
        r = np.maximum(self.radius(np.minimum(ys, self.chin_y * 0.97)), 0.2) * 0.98
        top_x = _lin(-0.9, 0.9, 9) * float(self.radius(y0))
        p["mask"] = _part(np.concatenate([r, -r[::-1], top_x]),
                          np.concatenate([ys, ys[::-1], y0 - 0.04 * np.cos(top_x * 1.5)]),
                          np.concatenate([np.full(20, 0.08), 0.3 * np.exp(-((top_x / 0.25) ** 2)) + 0.05]))
        r_ear = float(self.radius(-0.08))
        for name, s in (("strap_l", -1), ("strap_r", 1)):
            p[name] = _part(np.array([s * r[0], s * r_ear]), np.array([y0 + 0.05, -0.08]))
        return p


class _Painter:
    """Draws one photo of a face on a ``SUPERSAMPLE`` x canvas.

    Head units: 1 = half the face width at the cheekbones of an average face; X right, Y down,
    Z towards the camera; the origin lies on the head's vertical axis at cheekbone height. A
    surface point is given by its frontal position (x0, y) and a protrusion dz: it lies on the
    circular cross-section at height y (radius = the outline's half-width there), which yaw
    rotates about the vertical axis and pitch about the horizontal one; roll, scale and shift
    then place the result in the image.
    """

    UNIT = 36.0  # pixels of a 112-pixel image per head unit: eye centres 35 px apart, as insightface
    CENTER = (56.0, 62.0)

    def __init__(self, face: _Face, nuis: Nuisance, size: int) -> None:
        self.f = face
        self.g = face.genes
        self.n = nuis
        self.rng = np.random.default_rng([nuis.detail_seed, face.genes.texture_seed])
        self.canvas = size * SUPERSAMPLE
        k = self.canvas / 112.0
        s = self.UNIT * k * nuis.scale
        roll = math.radians(nuis.roll)
        self.unit_px = s
        self.a = (s * math.cos(roll), -s * math.sin(roll), s * math.sin(roll), s * math.cos(roll))
        self.ox = (self.CENTER[0] + nuis.shift_x) * k
        self.oy = (self.CENTER[1] + nuis.shift_y) * k
        yaw, pitch = math.radians(nuis.yaw), math.radians(nuis.pitch)
        self.cyaw, self.syaw = math.cos(yaw), math.sin(yaw)
        self.cpitch, self.spitch = math.cos(pitch), math.sin(pitch)
        self.lw = max(1, round(k))  # one output pixel
        self.img = Image.new("RGB", (self.canvas, self.canvas))
        self.draw = ImageDraw.Draw(self.img)
        self.P: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if nuis.occlusion == "sunglasses":
            self.glasses: str | None = "dark"
        else:
            self.glasses = "clear" if nuis.accessory < face.genes["glasses"] else None

    # --- projection and drawing ---------------------------------------------------------------

    def _pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        a11, a12, a21, a22 = self.a
        return np.stack((self.ox + a11 * x + a12 * y, self.oy + a21 * x + a22 * y), -1)

    def project(self, parts: dict[str, tuple]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Project named surface point sets (see ``_part``) at once. Returns, per name, pixel
        coordinates (n, 2) and facing (n,): the cosine between the surface normal and the view
        direction (< 0: turned away)."""
        f = self.f
        x0 = np.concatenate([p[0] for p in parts.values()])
        y = np.concatenate([p[1] for p in parts.values()])
        dz = np.concatenate([p[2] for p in parts.values()])
        r = np.maximum(np.interp(y, f.prof_y, f.prof_r), 1e-3)
        zc = np.interp(y, f.prof_y, f.prof_z)
        s = np.minimum(np.maximum(x0 / r, -1.0), 1.0)
        c = np.sqrt(1.0 - s * s)
        sin_a = s * self.cyaw + c * self.syaw
        cos_a = c * self.cyaw - s * self.syaw
        sin_a = np.where(cos_a < 0, np.sign(sin_a), sin_a)  # turned away: pinned to the silhouette
        rr = r + dz
        x = zc * self.syaw + rr * sin_a
        z = zc * self.cyaw + rr * np.maximum(cos_a, 0.0)
        pts = self._pixels(x, y * self.cpitch + z * self.spitch)
        out, start = {}, 0
        for name, p in parts.items():
            end = start + len(p[0])
            out[name] = (pts[start:end], cos_a[start:end])
            start = end
        return out

    def silhouette(self, y: np.ndarray, side: float, grow: float = 0.0) -> np.ndarray:
        """Pixel coordinates of the head outline at heights ``y`` on side -1 (left) or +1 (right)."""
        f = self.f
        r = np.interp(y, f.prof_y, f.prof_r)
        zc = np.interp(y, f.prof_y, f.prof_z)
        return self._pixels(side * (r + grow) + zc * self.syaw, y * self.cpitch + zc * self.cyaw * self.spitch)

    def col(self, c: np.ndarray | tuple) -> tuple[int, int, int]:
        """Drawing colour: ``c`` under the photo's colour cast and gamma, as 8-bit RGB."""
        r, g, b = c.tolist() if isinstance(c, np.ndarray) else c
        (cr, cg, cb), gamma = self.n.cast, self.n.gamma
        return (int(255 * min(1.0, max(0.0, r * cr / 255)) ** gamma),
                int(255 * min(1.0, max(0.0, g * cg / 255)) ** gamma),
                int(255 * min(1.0, max(0.0, b * cb / 255)) ** gamma))

    def fill(self, pts: np.ndarray, colour, outline=None, width: int = 0) -> None:
        self.draw.polygon(pts.ravel().tolist(), fill=self.col(colour),
                          outline=None if outline is None else self.col(outline), width=width)

    def line(self, pts: np.ndarray, colour, width: float) -> None:
        self.draw.line(pts.ravel().tolist(), fill=self.col(colour), width=max(1, round(width)), joint="curve")

    def dot(self, x: float, y: float, radius: float, colour) -> None:
        self.draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=self.col(colour))

    def visible(self, name: str, threshold: float = 0.15) -> bool:
        """Whether part ``name`` faces the camera enough to be drawn."""
        return name in self.P and float(self.P[name][1].mean()) > threshold

    # --- per-photo geometry -------------------------------------------------------------------

    def _parts(self) -> dict[str, tuple]:
        """The surface parts of this photo: the face's, moved by the expression, plus eyes and mouth."""
        f, n = self.f, self.n
        parts = dict(f.parts)
        for name in ("brow_l", "brow_r"):
            x, y, dz = parts[name]
            parts[name] = (x, y - n.brow_raise * 0.04, dz)
        if self.glasses is not None:
            parts.update(f.glasses_parts)
        if n.occlusion == "mask":
            parts.update(f.mask_parts)
        h = f.eye_h * n.eye_open
        dz = f.eye_dz
        for s, side in ((-1.0, "l"), (1.0, "r")):
            e = f.eye_geom[s]
            xs, loop_x = e["xs"], e["loop_x"]
            yu, yl = e["y0"] - h * e["upper"], e["y0"] + h * e["lower"]
            gx = s * f.eye_x + n.gaze_x * f.eye_w * 0.15
            gy = f.eye_y + n.gaze_y * h * 0.2 - 0.01
            parts[f"eye_{side}"] = (loop_x, np.concatenate([yu, yl[::-1]]), dz[26])
            for name, (cx, cy) in zip(("limbus", "iris", "pupil", "glint"), e["circles"]):
                parts[f"{name}_{side}"] = (gx + cx, gy + cy, dz[20])
            parts[f"lid_{side}"] = (loop_x, np.concatenate([yu + e["lid"], yu[::-1]]), dz[26])
            parts[f"under_{side}"] = (loop_x, np.concatenate([yl, yl[::-1] + f.iris_r * 1.2]), dz[26])
            parts[f"lash_{side}"] = (xs, yu, dz[13])
            parts[f"lower_{side}"] = (xs[2:-2], yl[2:-2], dz[9])
            parts[f"crease_{side}"] = (xs[2:-1], yu[2:-1] + e["crease"], dz[10])
        opening = n.mouth_open * 0.09 * (1.0 - _U15**2)
        mid = f.mouth_y - n.smile * 0.06 * (_U15**2 - 0.3)
        upper_in, lower_in = mid - opening / 2, mid + opening / 2
        x2, dz2 = f.mouth_loop_x, f.mouth_loop_dz
        parts["lip_upper"] = (x2, np.concatenate([upper_in + f.lip_top, upper_in[::-1]]), dz2)
        parts["lip_lower"] = (x2, np.concatenate([lower_in, (lower_in + f.lip_bottom)[::-1]]), dz2)
        parts["mouth_line"] = (f.mouth_x, mid, f.mouth_dz)
        if n.mouth_open > 0.15:
            parts["mouth_inside"] = (x2, np.concatenate([upper_in, lower_in[::-1]]), dz2)
            teeth = upper_in[3:-3]
            parts["teeth"] = _part(f.teeth_x, np.concatenate([teeth, (teeth + opening[3:-3] * 0.4)[::-1]]), 0.04)
        return parts

    # --- parts, back to front -----------------------------------------------------------------

    def background(self) -> None:
        """Plain colour, a few shapes, and clothes at the bottom."""
        rng = self.rng
        base = rng.uniform(25, 235, 3)
        self.draw.rectangle((0, 0, self.canvas, self.canvas), fill=self.col(base))
        for _ in range(int(rng.integers(0, 4))):
            c = _mix(base, rng.uniform(0, 255, 3), rng.uniform(0.2, 0.6))
            x, y = rng.uniform(0, self.canvas, 2)
            w, h = rng.uniform(0.1, 0.6, 2) * self.canvas
            box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
            (self.draw.rectangle if rng.random() < 0.5 else self.draw.ellipse)(box, fill=self.col(c))
        xs = np.array([-2.2, -0.6, 0.6, 2.2, 2.4, -2.4])
        self.fill(self._pixels(xs, np.array([1.95, 1.6, 1.6, 1.95, 3.0, 3.0])), rng.uniform(20, 235, 3))

    def hair_back(self) -> None:
        f = self.f
        c = f.hair * 0.82
        if f.hair_style in ("long", "bob", "curly"):
            bottom = {"long": _lerp(self.g["hair_length"], 1.3, 2.4), "bob": 1.0, "curly": 0.9}[f.hair_style]
            spread = f.rc + f.hair_vol + (0.38 if f.hair_style == "curly" else 0.1)
            ys = _lin(-f.crown - f.hair_vol, bottom, 14)
            r = np.where(ys > 0, spread, f.radius(np.minimum(ys, 0.0)) + f.hair_vol + 0.08)
            self.fill(np.concatenate([self._pixels(r, ys), self._pixels(-r[::-1], ys[::-1])]), c)
        elif f.hair_style == "bun":
            self.fill(self._pixels(_CIRCLE[:, 0] * 0.38, -f.crown - 0.22 + _CIRCLE[:, 1] * 0.3), c)

    def neck(self) -> None:
        w = 0.45 + 0.12 * self.g["face_width"]
        s = 0.35 * self.syaw
        self.fill(self._pixels(np.array([-w + s, w + s, w * 1.15, -w * 1.15]), np.array([0.5, 0.5, 2.2, 2.2])),
                  self.f.shade * 0.85)

    def ears(self, front: bool) -> None:
        """The ears that stick out behind the face (``front`` False) or, turned towards the
        camera, lie on the side of the face (``front`` True)."""
        f = self.f
        a11, a12, a21, a22 = (v / self.unit_px for v in self.a)
        for side, name in ((-1.0, "ear_l"), (1.0, "ear_r")):
            facing = -side * self.syaw  # cosine of the ear's angle to the view direction
            if facing < -0.26 or (facing > 0.35) != front:
                continue
            cx, cy = self.P[name][0][0]
            half_w = f.ear_h * (0.2 + 0.22 * max(facing, 0.0)) * self.unit_px
            half_h = f.ear_h * 0.45 * self.unit_px
            for scale, colour in ((1.0, f.skin * 0.93), (0.45, f.shade * 0.85)):
                ex, ey = _CIRCLE[:, 0] * half_w * scale, _CIRCLE[:, 1] * half_h * scale
                self.fill(np.stack([cx + a11 * ex + a12 * ey, cy + a21 * ex + a22 * ey], 1), colour)

    def skin(self) -> None:
        """Head in shade, its camera-facing part lit; cheeks, freckles, moles, forehead lines."""
        f, P = self.f, self.P
        ys = f.prof_y
        self.fill(np.concatenate([self.silhouette(ys, 1.0), self.silhouette(ys[::-1], -1.0)]), f.shade)
        self.fill(P["lit"][0], f.skin)
        pink = _mix(f.skin, (232, 120, 120), (self.g["blush"] - 0.6) * 0.45)
        for name in ("cheek_l", "cheek_r"):
            if name in P and P[name][1].min() > 0.1:
                self.fill(P[name][0], pink)
        radius = 0.013 * self.unit_px
        for name, r, colour in (("freckles", radius, f.skin * 0.74), ("moles", 2 * radius, (66, 42, 32))):
            pts, facing = P[name]
            ink = self.col(colour)
            for x, y in pts[facing > 0.25].tolist():
                self.draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
        for name in ("wrinkle0", "wrinkle1"):
            if name in P:
                self.line(P[name][0], f.skin * (1 - 0.18 * f.age), self.lw)

    def beard(self) -> None:
        f, P = self.f, self.P
        density = 0.25 if f.beard == "stubble" else 0.5 + 0.5 * self.g["beard_density"]
        c = _mix(f.skin, np.minimum(f.hair, f.skin * 0.8), density)  # never lighter than the skin
        if "beard" in P:
            self.fill(P["beard"][0], c)
        for name in ("goatee", "moustache"):
            if name in P:
                self.fill(P[name][0], c * 0.92)

    def mouth(self) -> None:
        f, P = self.f, self.P
        if "mouth_inside" in P:
            self.fill(P["mouth_inside"][0], (64, 22, 26))
            self.fill(P["teeth"][0], (236, 232, 222))
        self.fill(P["lip_upper"][0], f.lip * 0.9)
        self.fill(P["lip_lower"][0], f.lip)
        self.line(P["mouth_line"][0], f.lip * 0.55, self.lw * 1.2)

    def eye(self, side: str) -> None:
        f, P = self.f, self.P
        if not self.visible(f"eye_{side}"):
            return
        self.fill(P[f"eye_{side}"][0], (238, 236, 230))
        self.fill(P[f"limbus_{side}"][0], f.iris * 0.6)
        self.fill(P[f"iris_{side}"][0], f.iris)
        self.fill(P[f"pupil_{side}"][0], (14, 12, 12))
        self.fill(P[f"glint_{side}"][0], (250, 250, 250))
        # eyelid skin hides the parts of the iris outside the opening
        self.fill(P[f"lid_{side}"][0], f.skin * 0.96)
        self.fill(P[f"under_{side}"][0], f.skin)
        self.line(P[f"lash_{side}"][0], (34, 24, 22), self.lw * 1.7)
        self.line(P[f"lower_{side}"][0], f.shade * 0.88, self.lw * 0.8)
        if self.g["eyelid_crease"] > 0.4:
            self.line(P[f"crease_{side}"][0], f.shade * 0.88, self.lw)
        if self.visible(f"brow_{side}", 0.1):
            self.fill(P[f"brow_{side}"][0], f.brow)

    def nose(self) -> None:
        f, P = self.f, self.P
        self.fill(P["nose"][0], _mix(f.skin, f.shade, 0.35))
        shadow = "nose_side_l" if math.cos(self.n.light_angle) > 0 else "nose_side_r"
        self.line(P[shadow][0], f.shade * 0.9, self.lw * 1.5)
        self.line(P["nose_ridge"][0], _mix(f.skin, (255, 255, 255), 0.12), self.lw)
        self.fill(P["nose_tip"][0], _mix(f.skin, (255, 255, 255), 0.06))
        for name in ("nostril_l", "nostril_r"):
            if self.visible(name, 0.2):
                self.fill(P[name][0], f.shade * 0.55)

    def hair_front(self) -> None:
        f = self.f
        if f.hair_style == "bald":
            return
        ys = f.prof_y[f.prof_y <= f.hair_side_y]
        right = self.silhouette(ys, 1.0, f.hair_front_vol)  # crown -> right temple
        left = self.silhouette(ys[::-1], -1.0, f.hair_front_vol)  # left temple -> crown
        self.fill(np.concatenate([right, self.P["hairline"][0], left]), f.hair_front)
        if "hair_part" in self.P:
            self.line(self.P["hair_part"][0], f.hair_front * 0.7, self.lw)

    def draw_glasses(self, dark: bool) -> None:
        """Spectacles (an identity's habit) or, ``dark``, sunglasses (an occlusion)."""
        f, P = self.f, self.P
        for name in ("lens_l", "lens_r"):
            if not self.visible(name):
                continue
            pts = P[name][0]
            if dark:
                self.fill(pts, (18, 18, 22), outline=f.frame, width=self.lw * 2)
            else:
                self.line(np.concatenate([pts, pts[:1]]), f.frame, self.lw * 1.5)
        self.line(P["bridge"][0], f.frame, self.lw * 1.5)
        for name in ("arm_l", "arm_r"):
            if P[name][1][0] > 0.1:
                self.line(P[name][0], f.frame, self.lw * 1.5)

    def mask(self) -> None:
        colours = ((120, 170, 210), (235, 235, 235), (30, 30, 34), (170, 200, 190))
        c = np.asarray(colours[int(self.rng.integers(4))], float)
        self.fill(self.P["mask"][0], c)
        for name in ("strap_l", "strap_r"):
            if self.P[name][1][0] > 0:
                self.line(self.P[name][0], c * 0.9, self.lw * 1.2)

    def cap(self) -> None:
        f = self.f
        c = self.rng.uniform(20, 230, 3)
        brim_y = f.eye_y - self.rng.uniform(0.2, 0.34)
        ys = f.prof_y[f.prof_y <= brim_y]
        self.fill(np.concatenate([self.silhouette(ys, 1.0, 0.1), self.silhouette(ys[::-1], -1.0, 0.1)]), c)
        x = _lin(-1.05, 1.05, 11) * float(f.radius(brim_y))
        brim = _part(np.concatenate([x, x[::-1] * 0.9]),
                     np.concatenate([np.full(11, brim_y), brim_y + 0.12 + 0.05 * np.cos(x[::-1] * 1.4)]), 0.15)
        self.fill(self.project({"brim": brim})["brim"][0], c * 0.8)

    def hand_or_object(self, hand: bool) -> None:
        """A hand or an object in front of the face, placed in image coordinates."""
        rng, cs = self.rng, self.canvas
        cx, cy = cs * rng.uniform(0.25, 0.75), cs * rng.uniform(0.4, 0.85)
        size = cs * rng.uniform(0.18, 0.32)
        angle = rng.uniform(0, 2 * math.pi)
        ca, sa = math.cos(angle), math.sin(angle)
        if not hand:
            colour = rng.uniform(0, 255, 3)
            w, h = size * rng.uniform(0.3, 0.7), size * rng.uniform(0.3, 0.7)
            box = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
            pts = np.stack([cx + ca * box[:, 0] - sa * box[:, 1], cy + sa * box[:, 0] + ca * box[:, 1]], 1)
            self.fill(pts, colour, outline=colour * 0.6, width=self.lw * 2)
            return
        tone = rng.uniform(0, len(_SKIN) - 1.001)
        colour = _mix(_SKIN[int(tone)], _SKIN[int(tone) + 1], tone % 1)
        self.fill(np.stack([cx + _CIRCLE[:, 0] * size * 0.55, cy + _CIRCLE[:, 1] * size * 0.5], 1), colour)
        for k in range(4):  # fingers
            off = (k - 1.5) * size * 0.24
            bx, by = cx - sa * off, cy + ca * off
            length = size * (0.9 + 0.2 * (1 - abs(k - 1.5) / 1.5))
            tx, ty = bx + ca * length, by + sa * length
            self.draw.line((bx, by, tx, ty), fill=self.col(colour), width=int(size * 0.2))
            self.dot(tx, ty, size * 0.1, colour)
        arm = np.array([[-sa * 0.4, ca * 0.4], [-ca * 1.6 - sa * 0.4, -sa * 1.6 + ca * 0.4],
                        [-ca * 1.6 + sa * 0.4, -sa * 1.6 - ca * 0.4], [sa * 0.4, -ca * 0.4]])
        self.fill((cx, cy) + arm * size, colour * 0.95)

    def render(self) -> Image.Image:
        """Draw the whole photo, back to front; returns the supersampled canvas."""
        n = self.n
        self.P = self.project(self._parts())
        self.background()
        self.hair_back()
        self.neck()
        self.ears(front=False)
        self.skin()
        self.ears(front=True)
        self.beard()
        self.mouth()
        self.eye("l")
        self.eye("r")
        self.nose()
        if n.occlusion != "cap":
            self.hair_front()
        if self.glasses is not None:
            self.draw_glasses(dark=self.glasses == "dark")
        if n.occlusion == "mask":
            self.mask()
        elif n.occlusion == "cap":
            self.cap()
        elif n.occlusion in ("hand", "object"):
            self.hand_or_object(n.occlusion == "hand")
        return self.img


_NOISE_BANK_SIZE = 1 << 20
_noise_bank: np.ndarray | None = None


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise: a random window of a fixed bank (fast, and a function of rng)."""
    global _noise_bank
    if _noise_bank is None:
        _noise_bank = np.random.default_rng(0x5EED).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    count = math.prod(shape)
    start = int(rng.integers(0, _NOISE_BANK_SIZE - count))
    return _noise_bank[start : start + count].reshape(shape)


def _photometric(img: Image.Image, nuis: Nuisance, rng: np.random.Generator) -> Image.Image:
    """Low resolution, blur (box filter), directional illumination and sensor noise. (Colour
    cast and gamma are applied to the drawing colours.)"""
    size = img.size[0]
    if nuis.lowres > 1.0:
        small = max(8, round(size / nuis.lowres))
        img = img.resize((small, small), Image.BOX).resize((size, size), Image.BILINEAR)
    if nuis.blur > 0.05:
        img = img.filter(ImageFilter.BoxBlur(nuis.blur * size / 112.0))
    coords = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
    ramp = math.cos(nuis.light_angle) * coords[None, :] + math.sin(nuis.light_angle) * coords[:, None]
    shade = nuis.ambient + nuis.light_strength * np.clip(1.3 * ramp, -1.0, 1.0)
    a = np.asarray(img, dtype=np.float32) * shade[:, :, None]
    if nuis.noise > 0:
        a += _noise(rng, a.shape) * nuis.noise
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def render_face(identity: Identity, nuisance: Nuisance, size: int = 112) -> Image.Image:
    """Render ``identity`` under ``nuisance`` as a ``size`` x ``size`` RGB image (before JPEG)."""
    return _render(_Face(identity), nuisance, size)


def _render(face: _Face, nuisance: Nuisance, size: int) -> Image.Image:
    painter = _Painter(face, nuisance, size)
    img = painter.render().reduce(SUPERSAMPLE)
    return _photometric(img, nuisance, painter.rng)


def _jpeg(face: _Face, nuisance: Nuisance, size: int) -> bytes:
    buf = io.BytesIO()
    _render(face, nuisance, size).save(buf, "JPEG", quality=nuisance.jpeg_quality)
    return buf.getvalue()


def encode_face(identity: Identity, nuisance: Nuisance, size: int = 112) -> bytes:
    """``render_face`` encoded as JPEG at ``nuisance.jpeg_quality``: one stored sample."""
    return _jpeg(_Face(identity), nuisance, size)


# ----------------------------------------------------------------------------------------------
# Data set


@dataclass
class SynthConfig:
    """Size and seed of the synthetic data set; ``workers`` (processes) only changes the speed."""

    seed: int = 0
    num_identities: int = 1000
    images_per_identity: int = 20
    num_pairs: int = 3000
    image_size: int = 112
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    def __post_init__(self) -> None:
        if self.num_identities < 1 or self.images_per_identity < 1:
            raise ConfigError(f"num_identities and images_per_identity must be >= 1, got {self.num_identities} "
                              f"and {self.images_per_identity}")
        if self.num_pairs < 20 or self.num_pairs % 20:
            raise ConfigError(f"num_pairs must be a positive multiple of 20 (10 balanced folds), "
                              f"got {self.num_pairs}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be >= 32, got {self.image_size}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")

    def content(self) -> dict:
        """The fields that determine the output (all but ``workers``)."""
        return {k: v for k, v in asdict(self).items() if k != "workers"}


def train_identity(seed: int, index: int) -> Identity:
    """Training identity ``index`` (its label)."""
    return sample_identity(np.random.default_rng([seed, _STREAM_IDENTITY, _SPLITS["train"], index]))


def train_nuisance(seed: int, index: int, j: int) -> Nuisance:
    """Nuisance of image ``j`` of training identity ``index``."""
    return sample_nuisance(np.random.default_rng([seed, _STREAM_IMAGE, _SPLITS["train"], index, j]), "train")


def protocol_pair(seed: int, level: str, k: int) -> tuple[Identity, Identity, Nuisance, Nuisance, bool]:
    """Pair ``k`` of the "easy" or "hard" protocol: (identity a, identity b, nuisance a,
    nuisance b, is-same). Even pairs are genuine, odd pairs impostors; identities come from the
    protocol's own seed stream, never from the training one. In "hard" the two faces of every
    pair turn to opposite sides."""
    split = _SPLITS[level]
    same = k % 2 == 0
    a = sample_identity(np.random.default_rng([seed, _STREAM_IDENTITY, split, 2 * k]))
    b = a if same else sample_identity(np.random.default_rng([seed, _STREAM_IDENTITY, split, 2 * k + 1]))
    na = sample_nuisance(np.random.default_rng([seed, _STREAM_IMAGE, split, k, 0]), level)
    nb = sample_nuisance(np.random.default_rng([seed, _STREAM_IMAGE, split, k, 1]), level)
    if level == "hard" and na.yaw * nb.yaw > 0:
        nb = replace(nb, yaw=-nb.yaw)
    return a, b, na, nb, same


def _train_task(args: tuple[int, int, int, int]) -> list[bytes]:
    """The JPEG images of one training identity."""
    seed, index, count, size = args
    face = _Face(train_identity(seed, index))
    return [_jpeg(face, train_nuisance(seed, index, j), size) for j in range(count)]


def _pair_task(args: tuple[int, str, int, int]) -> list[bytes]:
    """The two JPEG images of one protocol pair."""
    seed, level, k, size = args
    a, b, na, nb, same = protocol_pair(seed, level, k)
    face_a = _Face(a)
    return [_jpeg(face_a, na, size), _jpeg(face_a if same else _Face(b), nb, size)]


def _results(pool, workers: int, func, tasks: list, bar: tqdm) -> Iterator[list[bytes]]:
    """``func`` over ``tasks`` in order, on ``pool`` (None: in this process), advancing ``bar``."""
    if pool is None:
        results = map(func, tasks)
    else:
        results = pool.imap(func, tasks, chunksize=max(1, min(16, len(tasks) // (8 * workers))))
    for images in results:
        bar.update(len(images))
        yield images


_FILES = {"train_rec": "train.rec", "train_idx": "train.idx", "property": "property",
          "easy": "synth_easy.bin", "hard": "synth_hard.bin"}


def _cached(out: Path, cfg: SynthConfig) -> bool:
    """Whether ``out`` holds a complete set for ``cfg`` (meta.json matches, sizes as recorded)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):  # no meta.json, or not JSON: not cached
        return False
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        return False
    sizes = meta.get("sizes")
    return meta.get("config") == cfg.content() and isinstance(sizes, dict) and all(
        (out / name).is_file() and (out / name).stat().st_size == sizes.get(name) for name in _FILES.values())


def generate_synthetic(out_dir: str | os.PathLike, cfg: SynthConfig, progress: bool = True) -> dict[str, Path]:
    """Write the synthetic data set into ``out_dir``, or reuse it when its ``meta.json`` matches.

    Writes ``train.rec``/``train.idx``/``property`` (insightface layout), ``synth_easy.bin``,
    ``synth_hard.bin`` and ``meta.json`` (format version, config, file sizes). Returns the paths
    by name: ``root`` (the folder), ``train_rec``, ``train_idx``, ``property``, ``easy``,
    ``hard``, ``meta``. Files are written under temporary names and renamed into place, and
    ``meta.json`` is removed first and written last, so an interrupted run never leaves a set
    that looks complete. The bytes do not depend on ``cfg.workers``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"root": out, **{k: out / v for k, v in _FILES.items()}, "meta": out / "meta.json"}
    if _cached(out, cfg):
        return paths
    paths["meta"].unlink(missing_ok=True)
    start = time.perf_counter()
    total = cfg.num_identities * cfg.images_per_identity + 4 * cfg.num_pairs
    pool = multiprocessing.Pool(cfg.workers) if cfg.workers > 1 else None
    bar = progress_bar(total=total, desc="synthetic faces", unit="img", enabled=progress)
    try:
        with staged_files(out, list(_FILES.values())) as tmp:
            tasks = [(cfg.seed, i, cfg.images_per_identity, cfg.image_size) for i in range(cfg.num_identities)]
            per_identity = _results(pool, cfg.workers, _train_task, tasks, bar)
            samples = ((image, label) for label, images in enumerate(per_identity) for image in images)
            write_face_dataset(out, samples, cfg.num_identities, (cfg.image_size, cfg.image_size),
                               rec_name=tmp["train.rec"].name, idx_name=tmp["train.idx"].name,
                               property_name=tmp["property"].name)
            for level in ("easy", "hard"):
                tasks = [(cfg.seed, level, k, cfg.image_size) for k in range(cfg.num_pairs)]
                images = [image for pair in _results(pool, cfg.workers, _pair_task, tasks, bar) for image in pair]
                write_bin(tmp[_FILES[level]], images, [k % 2 == 0 for k in range(cfg.num_pairs)])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    meta = {
        "format_version": FORMAT_VERSION,
        "config": cfg.content(),
        "sizes": {name: (out / name).stat().st_size for name in _FILES.values()},
        "num_train_images": cfg.num_identities * cfg.images_per_identity,
        "seconds": round(time.perf_counter() - start, 1),
    }
    meta_tmp = out / f".meta.json.tmp{os.getpid()}"
    meta_tmp.write_text(json.dumps(meta, indent=2))
    os.replace(meta_tmp, paths["meta"])
    return paths


def write_preview(out_png: str | os.PathLike, cfg: SynthConfig, n_ids: int = 8, per_id: int = 6,
                  level: str = "train") -> None:
    """Save a PNG grid of samples as stored (JPEG-decoded): one row per identity.

    "train": the first training identities with their first training images. "easy" / "hard":
    identities of that protocol's genuine pairs under that level's nuisance (for "hard",
    alternate columns turned to opposite sides, as in its pairs). The PNG uses a 256-colour
    palette to stay small."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    size = cfg.image_size
    grid = Image.new("RGB", (per_id * (size + 2) - 2, n_ids * (size + 2) - 2), (255, 255, 255))
    for row in range(n_ids):
        if level == "train":
            face = _Face(train_identity(cfg.seed, row))
            nuisances = [train_nuisance(cfg.seed, row, col) for col in range(per_id)]
        else:
            a, _, na, nb, _ = protocol_pair(cfg.seed, level, 2 * row)
            face = _Face(a)
            split = _SPLITS[level]
            nuisances = [na, nb] + [
                sample_nuisance(np.random.default_rng([cfg.seed, _STREAM_IMAGE, split, 2 * row, col]), level)
                for col in range(2, per_id)
            ]
            if level == "hard":
                nuisances = [replace(n, yaw=abs(n.yaw) * (1 if col % 2 else -1))
                             for col, n in enumerate(nuisances)]
        for col, nuis in enumerate(nuisances):
            image = Image.open(io.BytesIO(_jpeg(face, nuis, size))).convert("RGB")
            grid.paste(image, (col * (size + 2), row * (size + 2)))
    grid.quantize(256, method=Image.Quantize.MEDIANCUT).save(out_png, optimize=True)
