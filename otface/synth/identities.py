"""Genes and nuisances: who a synthetic person is, and what changes between two photos of them.

An *identity* is a vector of genes in [0, 1] (face shape, skin, eyes, brows, nose, mouth, ears,
hair, facial hair, skin texture, spectacles) plus the seed of its freckle and mole pattern. A
*nuisance* is everything that changes between two photos of the same person: pose (yaw, pitch,
roll), scale and position, expression, gaze, illumination (direction, strength, colour cast,
gamma), occlusion (sunglasses, mask, cap, hand, object), background and clothes, blur, low
resolution, noise and JPEG quality. Each is drawn at a difficulty level ("train", "easy",
"hard"; ``sample_nuisance``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVELS = ("train", "easy", "hard")

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
