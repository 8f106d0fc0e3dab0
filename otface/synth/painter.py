"""The painter: one photo of a face under a nuisance, drawn on a supersampled canvas.

Surface points of the face (``otface.synth.geometry``) are rotated by yaw and pitch and then by
roll, scale and shift, so turning the head shifts and foreshortens the features towards one side
and shows more of the other cheek. Drawing happens at ``SUPERSAMPLE`` x the output size and is
box-downsampled afterwards (``otface.synth.render``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from otface.synth.geometry import _CIRCLE, _U15, _Face, _lerp, _lin, _mix, _part
from otface.synth.identities import _SKIN, Nuisance

SUPERSAMPLE = 2


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
