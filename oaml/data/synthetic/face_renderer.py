"""The synthetic face renderer: identities drawn from integers, each image posed, lit and occluded.

Each identity is a set of random facial traits drawn from ``(seed, identity)`` alone: skin tone and a skin
texture with moles, hair colour and style, face outline and jaw, eye shape, spacing and iris colour, brows,
nose, lips, ears, facial hair. The traits sit in both the upper and the lower face, so identity survives a
niqab (eyes and brows stay visible) as well as sunglasses or a medical mask. The face is drawn once per
identity in the coordinates of the ArcFace 112x112 template (:mod:`oaml.data.synthetic.face_template`) and
cached.

Every image then gets its own nuisance drawn from ``(seed, identity, image index)``: pose (roll, scale,
shift and a small perspective tilt standing in for yaw/pitch), directional lighting on a head ellipsoid,
background, colour cast, brightness, contrast, blur and sensor noise; and, optionally, an occluder from
:mod:`oaml.data.synthetic.occluders` placed on the posed landmarks, with its pixel-exact visibility mask.

The datasets built on it are in :mod:`oaml.data.synthetic.datasets`.
"""

from __future__ import annotations

import colorsys
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from oaml.data.synthetic.face_template import TEMPLATE_112, TEMPLATE_SIZE
from oaml.data.synthetic.occluders import (
    RandomOccluder,
    apply_occluder,
    noise_field,
)

# Independent random streams, combined with the seed and the integers that name an item.
IDENTITY_STREAM = 0
NUISANCE_STREAM = 1
OCCLUDER_STREAM = 2
PAIR_LIST_STREAM = 3
PAIR_OCCLUSION_STREAM = 4

_FACE_CX = 56.0  # horizontal face centre in template coordinates
# ``occluder`` value meaning "draw one from the renderer's RandomOccluder".
RANDOM_OCCLUDER = "random"


def check_nonnegative_int(name: str, value: int, minimum: int = 0) -> int:
    """``value`` as an int, or a ValueError naming the argument (every count and index here is one)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255.0


def _col(colour) -> np.ndarray:
    """An RGB colour or per-channel factor shaped [3, 1, 1], to broadcast over channel-first images."""
    return np.asarray(colour, dtype=np.float32).reshape(3, 1, 1)


# ---------------------------------------------------------------------------------------------- drawing


def _soft(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of a shape from its (approximate) signed distance in template units."""
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def _ellipse_distance(tx, ty, cx, cy, a, b, angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), from its implicit equation."""
    dx, dy = tx - cx, ty - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = dx * c + dy * s, -dx * s + dy * c
    q = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return (q - 1.0) * (2.0 * a * b / (a + b))


def _band_distance(ty, centre_line, half_thickness, tx, cx, half_length) -> np.ndarray:
    """Signed distance to a horizontal band of varying centre line and thickness, cut to |x - cx| <= L."""
    return np.maximum(np.abs(ty - centre_line) - half_thickness, np.abs(tx - cx) - half_length)


class _Canvas:
    """A straight-alpha RGBA float canvas on the canonical grid, painted through template-space windows.

    ``window(x0, x1, y0, y1)`` returns the template coordinates of the pixels in that box as a row (1, w) and
    a column (h, 1), so a feature is evaluated only where it can be, with broadcasting doing the rest.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.scale = size / TEMPLATE_SIZE  # pixels per template unit
        self.pixel = 1.0 / self.scale  # template units per pixel
        self.coords = np.arange(size, dtype=np.float32) * np.float32(self.pixel)
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)
        self._box: tuple[slice, slice] = (slice(0, size), slice(0, size))

    def _pixels(self, start: float, stop: float) -> slice:
        """The pixel rows or columns covering template coordinates [start, stop], clipped to the canvas."""
        first = int(math.floor(start * self.scale))
        last = int(math.ceil(stop * self.scale)) + 1
        return slice(min(max(first, 0), self.size), min(max(last, 0), self.size))

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[np.ndarray, np.ndarray]:
        """Select the box for the next :meth:`paint`; return its template coordinates (row, column)."""
        self._box = (self._pixels(y0, y1), self._pixels(x0, x1))
        return self.coords[None, self._box[1]], self.coords[self._box[0], None]

    @property
    def box(self) -> tuple[slice, slice]:
        """(rows, columns) of the current window."""
        return self._box

    def paint(self, coverage: np.ndarray, colour, solid: bool = False) -> None:
        """Blend ``colour`` (RGB or per-pixel) into the last window; ``solid`` layers also add to alpha."""
        rgb = self.rgb[self._box]
        coverage = np.broadcast_to(coverage, rgb.shape[:2])
        rgb += coverage[..., None] * (np.asarray(colour, dtype=np.float32) - rgb)
        if solid:
            np.maximum(self.alpha[self._box], coverage, out=self.alpha[self._box])


@dataclass(frozen=True)
class _FaceBase:
    """One identity drawn in canonical (template) pose, plus what posing and lighting need."""

    image: Image.Image  # premultiplied RGBA ("RGBa"), so that warping does not bleed black into the edges
    landmarks: np.ndarray  # float64 [5, 2] in template coordinates
    head: tuple[float, float, float]  # (half width, half height, centre y) of the head ellipsoid for shading


def _sample_skin(rng: np.random.Generator) -> np.ndarray:
    tone = rng.random()  # 0 dark .. 1 light
    return _hsv(0.05 + rng.normal(0.0, 0.012), 0.58 - 0.3 * tone + rng.normal(0.0, 0.04), 0.3 + 0.65 * tone)


def _sample_hair(rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(6, p=[0.3, 0.25, 0.2, 0.12, 0.06, 0.07])
    h, s, v = [
        (0.07, 0.2, rng.uniform(0.05, 0.14)),  # black
        (0.07, 0.55, rng.uniform(0.18, 0.3)),  # dark brown
        (0.08, 0.55, rng.uniform(0.32, 0.48)),  # brown
        (0.12, 0.45, rng.uniform(0.65, 0.85)),  # blond
        (0.04, 0.72, rng.uniform(0.45, 0.62)),  # red
        (0.1, 0.05, rng.uniform(0.5, 0.82)),  # grey
    ][kind]
    return _hsv(h + rng.normal(0, 0.01), s + rng.normal(0, 0.05), v)


_IRIS_COLOURS = np.array(
    [[60, 35, 20], [100, 62, 32], [125, 98, 52], [80, 122, 72], [72, 112, 172], [122, 132, 142]], np.float32
)


def _upsampled_field(field: np.ndarray, size: int) -> np.ndarray:
    """A smooth [size, size] field from a coarse random grid (bicubic), for skin texture."""
    image = Image.fromarray(field.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), np.float32)


def _render_identity(rng: np.random.Generator, size: int) -> _FaceBase:
    """Draw every trait of one identity from ``rng`` and paint the face in canonical pose.

    The order of random draws is fixed and independent of ``size``: an identity looks the same at every
    image size.
    """
    le, re, nose, ml, mr = (p.copy() for p in TEMPLATE_112)

    # --- traits -----------------------------------------------------------------------------------------
    skin = _sample_skin(rng)
    hair = _sample_hair(rng)
    hair_style = rng.choice(3, p=[0.55, 0.33, 0.12])  # short, long, receding/shaved
    face_cy = 60.0 + rng.uniform(-2.0, 2.0)
    face_a = rng.uniform(37.0, 45.0)
    jaw_a = face_a * rng.uniform(0.72, 0.95)
    face_top, chin = rng.uniform(42.0, 50.0), rng.uniform(40.0, 50.0)
    jaw_power = rng.uniform(1.7, 2.5)

    spacing, eye_dy = rng.uniform(-2.5, 2.5), rng.uniform(-2.0, 2.0)
    le += (-spacing / 2, eye_dy)
    re += (spacing / 2, eye_dy)
    nose += (0.0, rng.uniform(-3.5, 3.5))
    mouth_dy, mouth_dw = rng.uniform(-3.5, 3.5), rng.uniform(-3.5, 3.5)
    ml += (-mouth_dw, mouth_dy)
    mr += (mouth_dw, mouth_dy)

    eye_a, eye_b = rng.uniform(6.5, 9.0), rng.uniform(2.6, 4.4)
    eye_tilt = rng.uniform(-0.15, 0.15)
    iris_r = rng.uniform(2.6, 3.6)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2)
    lid = rng.uniform(0.6, 1.4)
    socket = rng.uniform(0.08, 0.3)

    brow_gap, brow_t = rng.uniform(7.0, 11.5), rng.uniform(0.8, 1.9)
    brow_arch, brow_len, brow_tilt = rng.uniform(0.0, 4.0), rng.uniform(9.0, 14.0), rng.uniform(-2.0, 2.0)
    brow = hair * rng.uniform(0.55, 0.95)

    nose_w, nostril = rng.uniform(7.0, 12.0), rng.uniform(1.0, 2.0)
    nose_shade, bridge_half = rng.uniform(0.1, 0.3), rng.uniform(3.0, 5.0)

    upper_lip, lower_lip = rng.uniform(1.2, 3.5), rng.uniform(1.8, 4.5)
    smile = rng.uniform(-1.5, 2.5)
    _, skin_s, skin_v = colorsys.rgb_to_hsv(*(skin / 255.0))
    lips = _hsv(rng.uniform(-0.02, 0.02), skin_s + rng.uniform(0.15, 0.35), skin_v * rng.uniform(0.65, 0.9))

    hairline = rng.uniform(22.0, 32.0) if hair_style != 2 else rng.uniform(10.0, 18.0)
    side_drop, fringe = rng.uniform(10.0, 30.0), rng.uniform(0.0, 3.0)
    fringe_freq, fringe_phase = rng.uniform(0.15, 0.5), rng.uniform(0.0, 2 * math.pi)
    curtain, curtain_end = rng.uniform(3.0, 9.0), rng.uniform(82.0, 106.0)
    ear_scale, ear_y = rng.uniform(0.8, 1.2), rng.uniform(60.0, 68.0)
    neck_w = rng.uniform(17.0, 24.0)

    texture_field = rng.standard_normal((5, 5))
    redness_field = rng.standard_normal((5, 5))
    texture_amp, redness_amp = rng.uniform(3.0, 10.0), rng.uniform(0.0, 6.0)
    blush = rng.uniform(0.0, 0.2) if rng.random() < 0.5 else 0.0
    facial_hair = rng.choice(4, p=[0.65, 0.12, 0.13, 0.10])  # none, moustache, beard, stubble
    beard_alpha = rng.uniform(0.5, 0.9)
    n_moles = min(int(rng.poisson(1.0)), 4)
    moles = [(rng.uniform(25, 87), rng.uniform(30, 100), rng.uniform(0.7, 1.6)) for _ in range(n_moles)]

    # --- painting, back to front ------------------------------------------------------------------------
    canvas = _Canvas(size)
    px = canvas.pixel
    head_a, head_b = face_a + 3.0, face_top + 5.0
    full = (0.0, TEMPLATE_SIZE, 0.0, TEMPLATE_SIZE)

    if hair_style == 1:  # long hair falls behind the face down to the shoulders
        tx, ty = canvas.window(*full)
        back = _ellipse_distance(tx, ty, _FACE_CX, face_cy + 18, face_a + 9, face_top + 38)
        canvas.paint(_soft(back, px), hair, solid=True)
    neck_top = face_cy + chin * 0.5
    tx, ty = canvas.window(_FACE_CX - neck_w - 1, _FACE_CX + neck_w + 1, neck_top - 1, TEMPLATE_SIZE)
    canvas.paint(
        _soft(np.maximum(np.abs(tx - _FACE_CX) - neck_w, neck_top - ty), px), skin * 0.78, solid=True
    )
    for side in (-1.0, 1.0):
        ex, ea, eb = _FACE_CX + side * (face_a + 1.5), 4.0 * ear_scale, 9.0 * ear_scale
        tx, ty = canvas.window(ex - ea - 1, ex + ea + 1, ear_y - eb - 1, ear_y + eb + 1)
        canvas.paint(_soft(_ellipse_distance(tx, ty, ex, ear_y, ea, eb), px), skin * 0.88, solid=True)

    # Face outline: an ellipse above the centre line, a superellipse (the jaw) below it; textured skin.
    face_box = (_FACE_CX - face_a - 1, _FACE_CX + face_a + 1, face_cy - face_top - 1, face_cy + chin + 1)
    tx, ty = canvas.window(*face_box)
    dx, dy = np.abs(tx - _FACE_CX), ty - face_cy
    upper = np.sqrt((dx / face_a) ** 2 + (dy / face_top) ** 2)
    lower = ((dx / jaw_a) ** jaw_power + (np.maximum(dy, 0.0) / chin) ** jaw_power) ** (1.0 / jaw_power)
    face_cov = _soft((np.where(dy < 0, upper, lower) - 1.0) * jaw_a, px)
    box = canvas.box
    skin_tex = np.empty(face_cov.shape + (3,), np.float32)
    skin_tex[:] = skin
    skin_tex += texture_amp * _upsampled_field(texture_field, size)[box][..., None]
    skin_tex[..., 0] += redness_amp * _upsampled_field(redness_field, size)[box]
    canvas.paint(face_cov, skin_tex, solid=True)
    face_mask = np.zeros((size, size), np.float32)
    face_mask[box] = face_cov
    if blush:
        for side in (-1.0, 1.0):
            bx = _FACE_CX + side * 24.0
            tx, ty = canvas.window(bx - 20, bx + 20, 76.0 - 15, 76.0 + 15)
            glow = np.exp(-(((tx - bx) / 8.0) ** 2 + ((ty - 76.0) / 6.0) ** 2))
            canvas.paint(face_mask[canvas.box] * blush * glow, (200.0, 70.0, 70.0))

    # Hair on top of the head, and side curtains for long hair.
    head_box = (_FACE_CX - head_a - 1, _FACE_CX + head_a + 1, face_cy - head_b - 1)
    tx, ty = canvas.window(*head_box, hairline + side_drop + fringe + 1)
    line = (
        hairline
        + side_drop * ((tx - _FACE_CX) / face_a) ** 4
        + fringe * np.sin(fringe_freq * tx + fringe_phase)
    )
    head = _ellipse_distance(tx, ty, _FACE_CX, face_cy, head_a, head_b)
    canvas.paint(
        _soft(np.maximum(head, ty - line), px) * (0.45 if hair_style == 2 else 1.0), hair, solid=True
    )
    if hair_style == 1:
        tx, ty = canvas.window(*head_box, curtain_end + 1)
        head = _ellipse_distance(tx, ty, _FACE_CX, face_cy, head_a, head_b)
        sides = np.maximum(np.maximum(head, face_a - curtain - np.abs(tx - _FACE_CX)), ty - curtain_end)
        canvas.paint(_soft(sides, px), hair, solid=True)

    # Eyes (socket shadow, sclera, iris, pupil, upper lid) and brows.
    for (ex, ey), mirror in ((le, -1.0), (re, 1.0)):
        sa, sb = eye_a * 1.6, eye_b * 2.6
        tx, ty = canvas.window(ex - 2.2 * sa, ex + 2.2 * sa, ey - 2 - 2.2 * sb, ey - 2 + 2.2 * sb)
        canvas.paint(socket * np.exp(-(((tx - ex) / sa) ** 2 + ((ty - ey + 2.0) / sb) ** 2)), skin * 0.55)
        tx, ty = canvas.window(ex - eye_a - 2, ex + eye_a + 2, ey - eye_a - 2, ey + eye_a + 2)
        sclera = _ellipse_distance(tx, ty, ex, ey, eye_a, eye_b, mirror * eye_tilt)
        sclera_cov = _soft(sclera, px)
        canvas.paint(sclera_cov, (232.0, 228.0, 222.0))
        centre_distance = np.sqrt((tx - ex) ** 2 + (ty - ey) ** 2)
        canvas.paint(sclera_cov * _soft(centre_distance - iris_r, px), iris)
        canvas.paint(sclera_cov * _soft(centre_distance - iris_r * 0.45, px), (15.0, 12.0, 12.0))
        canvas.paint(_soft(np.abs(sclera) - lid * 0.5, px) * (ty < ey + eye_b * 0.3), (30.0, 22.0, 20.0))

        bx = ex + mirror * 1.0
        top = ey - brow_gap - brow_arch - abs(brow_tilt) - brow_t - 2
        tx, ty = canvas.window(bx - brow_len - 1, bx + brow_len + 1, top, ey - brow_gap + abs(brow_tilt) + 3)
        xr = np.clip((tx - bx) / brow_len, -1.0, 1.0)
        centre_line = ey - brow_gap - brow_arch * (1.0 - xr * xr) + mirror * brow_tilt * xr
        thickness = brow_t * (1.0 - 0.45 * np.clip(mirror * xr, 0.0, 1.0))
        canvas.paint(_soft(_band_distance(ty, centre_line, thickness, tx, bx, brow_len), px), brow)

    # Nose: bridge shadows, nostrils, tip.
    nx, ny = nose
    eye_y = (le[1] + re[1]) / 2
    bridge_cy, bridge_len = (eye_y + ny + 2) / 2, (ny - eye_y - 6) / 2
    for side in (-1.0, 1.0):
        bx = nx + side * bridge_half
        tx, ty = canvas.window(bx - 2, bx + 2, bridge_cy - bridge_len - 1, bridge_cy + bridge_len + 1)
        canvas.paint(
            _soft(_band_distance(tx, bx, 0.8, ty, bridge_cy, bridge_len), px) * nose_shade, skin * 0.6
        )
        ox, oy, oa, ob = nx + side * nose_w * 0.4, ny + 2.0, nostril * 1.3, nostril * 0.8
        tx, ty = canvas.window(ox - oa - 1, ox + oa + 1, oy - ob - 1, oy + ob + 1)
        canvas.paint(_soft(_ellipse_distance(tx, ty, ox, oy, oa, ob), px), skin * 0.35)
    tx, ty = canvas.window(nx - nose_w * 0.45 - 1, nx + nose_w * 0.45 + 1, ny - 5.5, ny + 3.5)
    tip = _ellipse_distance(tx, ty, nx, ny - 1.0, nose_w * 0.45, 3.5)
    canvas.paint(_soft(tip, px) * 0.5, skin * np.array([0.98, 0.88, 0.86]))

    # Mouth: facial hair, then lips around a (possibly smiling) mouth line, then the line itself.
    mx, my = (ml + mr) / 2
    mw = (mr[0] - ml[0]) / 2
    if facial_hair in (2, 3):  # beard or stubble on the lower face, under the mouth
        tx, ty = canvas.window(face_box[0], face_box[1], my - 4.0 - abs(smile) - 1, face_box[3])
        stubble = 0.75 + 0.25 * np.sin(tx * 2.3) * np.sin(ty * 2.9)
        strength = beard_alpha if facial_hair == 2 else 0.3
        mouth_line = my - smile * ((tx - mx) / mw) ** 2 + smile * 0.3
        cover = face_mask[canvas.box] * _soft(mouth_line - 4.0 - ty, px) * strength * stubble
        canvas.paint(cover, hair * 0.8)
    tx, ty = canvas.window(mx - mw - 3, mx + mw + 3, my - 9.0 - abs(smile), my + lower_lip + 2 + abs(smile))
    xr = (tx - mx) / mw
    lip_shape = np.sqrt(np.clip(1.0 - xr * xr, 0.0, 1.0))
    mouth_line = my - smile * xr * xr + smile * 0.3
    if facial_hair in (1, 2):  # moustache
        moustache = _band_distance(ty, mouth_line - upper_lip - 2.2, 1.8, tx, mx, mw + 2.0)
        canvas.paint(_soft(moustache, px) * 0.9, hair * 0.8)
    upper_d = _band_distance(
        ty, mouth_line - upper_lip * lip_shape / 2, upper_lip * lip_shape / 2, tx, mx, mw
    )
    lower_d = _band_distance(
        ty, mouth_line + lower_lip * lip_shape / 2, lower_lip * lip_shape / 2, tx, mx, mw
    )
    canvas.paint(_soft(upper_d, px), lips * 0.92)
    canvas.paint(_soft(lower_d, px), lips)
    canvas.paint(_soft(_band_distance(ty, mouth_line, 0.45, tx, mx, mw), px), lips * 0.45)

    for mole_x, mole_y, mole_r in moles:
        tx, ty = canvas.window(
            mole_x - mole_r - 1, mole_x + mole_r + 1, mole_y - mole_r - 1, mole_y + mole_r + 1
        )
        dot = _soft(np.sqrt((tx - mole_x) ** 2 + (ty - mole_y) ** 2) - mole_r, px)
        canvas.paint(face_mask[canvas.box] * dot, skin * 0.45)

    rgba = np.empty((size, size, 4), np.uint8)
    rgba[..., :3] = np.clip(canvas.rgb * canvas.alpha[..., None] + 0.5, 0.0, 255.0)
    rgba[..., 3] = np.clip(canvas.alpha * 255.0 + 0.5, 0.0, 255.0)
    image = Image.frombuffer("RGBa", (size, size), rgba.tobytes(), "raw", "RGBa", 0, 1)
    return _FaceBase(image=image, landmarks=np.stack([le, re, nose, ml, mr]), head=(head_a, head_b, face_cy))


# ---------------------------------------------------------------------------------------------- renderer

_LIGHT_GRID = 28  # lighting and background are smooth: computed on a coarse grid, then upsampled


class FaceRenderer:
    """Renders identity ``g``'s image ``n`` as a pure function of ``(seed, g, n)``.

    Identity drawings are cached (least recently used first out); the cache is per process and dropped when
    the renderer is pickled, e.g. into a DataLoader worker.
    """

    def __init__(self, seed: int = 0, image_size: int = TEMPLATE_SIZE, cache_size: int = 1024) -> None:
        self.seed = check_nonnegative_int("seed", seed)
        self.image_size = check_nonnegative_int("image_size", image_size, minimum=32)
        self.cache_size = check_nonnegative_int("cache_size", cache_size)
        self._scale = self.image_size / TEMPLATE_SIZE  # pixels per template unit
        coarse = (np.arange(_LIGHT_GRID, dtype=np.float32) + 0.5) * np.float32(TEMPLATE_SIZE / _LIGHT_GRID)
        self._coarse_x, self._coarse_y = coarse[None, :], coarse[:, None]
        self._cache: OrderedDict[int, _FaceBase] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def base(self, identity: int) -> _FaceBase:
        """The canonical-pose drawing of global identity ``identity`` (cached)."""
        cached = self._cache.get(identity)
        if cached is not None:
            self._cache.move_to_end(identity)
            return cached
        base = _render_identity(
            np.random.default_rng([self.seed, IDENTITY_STREAM, identity]), self.image_size
        )
        if self.cache_size:
            self._cache[identity] = base
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return base

    def render(
        self,
        identity: int,
        image_index: int,
        occluder: str | None = None,
        random_occluder: RandomOccluder | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Render one image: (uint8 [S, S, 3] RGB, float32 [S, S] visibility, occluder type or None).

        ``occluder`` is None (clean), a type of :data:`OCCLUDER_TYPES`, or ``"random"`` (drawn by
        ``random_occluder``). The face and its nuisance do not depend on ``occluder``: the clean and the
        occluded renders of one (identity, image index) differ only where the visibility mask is 0.
        """
        identity = check_nonnegative_int("identity", identity)
        image_index = check_nonnegative_int("image_index", image_index)
        base = self.base(identity)
        rng = np.random.default_rng([self.seed, NUISANCE_STREAM, identity, image_index])
        image, landmarks = self._apply_nuisance(base, rng)
        if occluder is None:
            return image, np.ones(image.shape[:2], np.float32), None
        occluder_rng = np.random.default_rng([self.seed, OCCLUDER_STREAM, identity, image_index])
        if occluder == RANDOM_OCCLUDER:
            if random_occluder is None:
                raise ValueError('occluder="random" needs a random_occluder to draw the type from')
            return random_occluder(image, occluder_rng, landmarks)
        occluded, visibility = apply_occluder(image, occluder, occluder_rng, landmarks)
        return occluded, visibility, occluder

    def _coarse_to_full(self, field: np.ndarray) -> np.ndarray:
        image = Image.fromarray(field.astype(np.float32), mode="F")
        return np.asarray(image.resize((self.image_size,) * 2, Image.Resampling.BILINEAR), np.float32)

    def _apply_nuisance(self, base: _FaceBase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Pose, light, background and camera for one image; returns it (uint8 [S, S, 3]) and its landmarks
        in pixels. Arrays are channel-first inside so that per-pixel factors broadcast cheaply."""
        size, scale = self.image_size, self._scale

        # Pose: roll, scale, shift and a small perspective tilt about the face centre (template units).
        roll = math.radians(float(np.clip(rng.normal(0.0, 5.0), -12.0, 12.0)))
        zoom = rng.uniform(0.92, 1.08)
        shift = rng.uniform(-3.0, 3.0, size=2)
        tilt = rng.uniform(-0.0015, 0.0015, size=2)
        centre = np.array([_FACE_CX, 60.0])
        pose = np.eye(3)
        pose[:2, :2] = zoom * np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
        pose[2, :2] = tilt
        to_centre, from_centre = np.eye(3), np.eye(3)
        to_centre[:2, 2] = -centre
        from_centre[:2, 2] = centre + shift
        pose = from_centre @ pose @ to_centre  # template -> posed template
        unpose = np.linalg.inv(pose)
        to_pixels = np.diag([scale, scale, 1.0])
        to_pil, from_pil = np.eye(3), np.eye(3)  # PIL samples at pixel centres i + 0.5
        to_pil[:2, 2], from_pil[:2, 2] = 0.5, -0.5
        out_to_in = to_pil @ to_pixels @ unpose @ np.linalg.inv(to_pixels) @ from_pil
        out_to_in /= out_to_in[2, 2]
        # Premultiplied RGBA ("RGBa") warps without dark fringes and composites with one multiply-add.
        posed = base.image.transform(
            (size, size), Image.Transform.PERSPECTIVE, tuple(out_to_in.ravel()[:8]), Image.Resampling.BILINEAR
        )
        layers = (
            np.asarray(posed).transpose(2, 0, 1).astype(np.float32)
        )  # [4, S, S]: premultiplied RGB, alpha

        # Directional light (Lambert) on the posed head ellipsoid, on a coarse grid: shading is smooth.
        cx, cy = self._coarse_x, self._coarse_y
        w = unpose[2, 0] * cx + unpose[2, 1] * cy + unpose[2, 2]
        ux = (unpose[0, 0] * cx + unpose[0, 1] * cy + unpose[0, 2]) / w
        uy = (unpose[1, 0] * cx + unpose[1, 1] * cy + unpose[1, 2]) / w
        head_a, head_b, head_cy = base.head
        nx = np.clip((ux - _FACE_CX) / head_a, -1.0, 1.0)
        ny = np.clip((uy - head_cy) / head_b, -1.0, 1.0)
        nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.02, 1.0))
        light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.5, 0.4), 1.0])
        light /= np.linalg.norm(light)
        ambient = rng.uniform(0.45, 0.7)
        shade = ambient + (1.1 - ambient) * np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)

        # Background: a two-colour gradient with a soft wave.
        c1 = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.95))
        c2 = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.95))
        angle, period, phase = (
            rng.uniform(0, 2 * math.pi),
            rng.uniform(20.0, 80.0),
            rng.uniform(0, 2 * math.pi),
        )
        along = (cx * math.cos(angle) + cy * math.sin(angle)) / TEMPLATE_SIZE
        t = np.clip(
            0.5 + 0.5 * along + 0.15 * np.sin(along * TEMPLATE_SIZE * 2 * math.pi / period + phase), 0, 1
        )

        # Camera: colour cast, brightness and contrast as one per-channel affine map; blur; sensor noise.
        gains = np.exp(rng.normal(0.0, 0.05, size=3)) * rng.uniform(0.78, 1.18)
        contrast = rng.uniform(0.8, 1.15)
        blur = rng.uniform(0.3, 1.4) if rng.random() < 0.5 else 0.0
        noise_sigma = rng.uniform(0.0, 7.0)

        background = _col(c1) + _col(c2 - c1) * self._coarse_to_full(t)[None]
        transparent = 1.0 - layers[3] * np.float32(1.0 / 255.0)
        image = layers[:3] * self._coarse_to_full(shade)[None] + transparent[None] * background
        image = image * _col(gains * contrast) + np.float32(128.0 * (1.0 - contrast))
        if blur:  # optics blur first, then the sensor noise on top
            sharp = np.clip(image, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 0)
            blurred = Image.fromarray(np.ascontiguousarray(sharp)).filter(
                ImageFilter.GaussianBlur(blur * scale)
            )
            image = np.asarray(blurred).transpose(2, 0, 1).astype(np.float32)
        if noise_sigma > 0.5:
            image += noise_field(rng, size, size)[None] * np.float32(noise_sigma)
        image = np.ascontiguousarray(np.clip(image, 0.0, 255.0).astype(np.uint8).transpose(1, 2, 0))

        homogeneous = np.c_[base.landmarks, np.ones(5)] @ pose.T
        landmarks = homogeneous[:, :2] / homogeneous[:, 2:] * scale
        return image, landmarks
