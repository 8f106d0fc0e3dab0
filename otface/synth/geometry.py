"""The face's shape: an identity's head profile, colours, styles and feature surfaces (``_Face``).

The head is a stack of horizontal cross-sections (circles whose radius follows the face outline,
pushed forward below the cheekbones so the jaw and chin protrude). Features are points on that
surface (plus a protrusion for the nose and lips), given as frontal position and protrusion
(``_part``); ``otface.synth.painter`` rotates and projects them for each photo.
"""

from __future__ import annotations

import functools

import numpy as np

from otface.synth.identities import _BEARDS, _HAIR, _HAIR_STYLES, _IRIS, _SKIN, Identity, _pick


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

