"""Occluders drawn onto aligned face images, each with a pixel-exact visibility mask.

Every occluder is an opaque shape defined in the coordinates of the 112x112 ArcFace template
(:mod:`oaml.data.synthetic.face_template`): a pixel is mapped to template coordinates, the shape's implicit
inequality is evaluated there, and the occluder's own texture replaces the pixel wherever the inequality holds.
The mask is therefore exact by construction -- ``mask == 0`` precisely where occluder pixels were written, ``1``
elsewhere -- which is what the occlusion head is supervised with.

Placement comes from the template (or from the image's own five landmarks when known, e.g. a posed synthetic
face) plus random jitter, so the same occluders fit any aligned face: synthetic renders and real crops alike.
Colour and texture come only from the occluder's random generator, never from the face, so two different people
wearing the same kind of niqab look alike where they are covered; matching must learn to ignore those regions.

Types (``OCCLUDER_TYPES``):

- ``"niqab"``: everything hidden except a slit around the eyes (forehead/hair above and the whole lower face
  below are covered);
- ``"medical_mask"``: nose, mouth, cheeks and chin, with ear straps;
- ``"sunglasses"``: two dark lenses with frame, bridge and temple arms;
- ``"blocks"``: one to three random rectangles on the face;
- ``"blobs"``: one or two irregular ellipses on the face.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Mapping
from functools import lru_cache

import numpy as np

from oaml.data.synthetic.face_template import TEMPLATE_112, TEMPLATE_SIZE

OCCLUDER_TYPES: tuple[str, ...] = ("niqab", "medical_mask", "sunglasses", "blocks", "blobs")

_EYE_MID = (TEMPLATE_112[0] + TEMPLATE_112[1]) / 2.0  # (55.9, 51.6)
_FACE_CENTRE = (56.0, 66.0)  # placement jitter rotates and scales about this point


# ---------------------------------------------------------------------------------------------- geometry


@lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), float32 [H, W] each, read-only (shared between calls)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def similarity_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (2x3, template -> image) taking the 112 template onto ``landmarks``.

    The closed form for a rotation, uniform scale and shift (the reflection-free case of Umeyama 1991,
    "Least-squares estimation of transformation parameters between two point patterns"): the estimator
    InsightFace uses to align faces in the first place.
    """
    dst = np.asarray(landmarks, dtype=np.float64)
    if dst.shape != (5, 2) or not np.all(np.isfinite(dst)):
        raise ValueError(f"landmarks must be a finite [5, 2] array (x, y per point), got shape {dst.shape}")
    src_mean, dst_mean = TEMPLATE_112.mean(0), dst.mean(0)
    (x, y), (u, v) = (TEMPLATE_112 - src_mean).T, (dst - dst_mean).T
    norm = (x * x + y * y).sum()
    a, b = (x * u + y * v).sum() / norm, (x * v - y * u).sum() / norm  # scale * (cos, sin)
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def _template_coordinates(
    height: int,
    width: int,
    landmarks: np.ndarray | None,
    rng: np.random.Generator,
    box: tuple[float, float, float, float] | None,
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Template coordinates (tx, ty) of the pixels an occluder can reach, including a random placement jitter.

    Without landmarks the image is taken to be an aligned crop: the template is scaled to the image size.
    The jitter (rotation +-3 degrees, scale +-4 %, shift +-2 template pixels) moves the occluder, not the face.
    ``box`` (x0, x1, y0, y1), in template coordinates, bounds the occluder; only the pixels inside its image
    (the returned row and column slices) are computed. None: the whole image.
    """
    if landmarks is None:
        to_image = np.array([[width / TEMPLATE_SIZE, 0.0, 0.0], [0.0, height / TEMPLATE_SIZE, 0.0]])
    else:
        to_image = similarity_from_landmarks(landmarks)
    angle = math.radians(rng.uniform(-3.0, 3.0))
    scale = rng.uniform(0.96, 1.04)
    shift = rng.uniform(-2.0, 2.0, size=2)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    jitter = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    centre = np.array(_FACE_CENTRE)
    jitter[:2, 2] = centre + shift - jitter[:2, :2] @ centre
    full = np.vstack([to_image, [0.0, 0.0, 1.0]]) @ jitter  # jittered template -> image
    window = (slice(0, height), slice(0, width))
    if box is not None:
        x0, x1, y0, y1 = box
        corners = full[:2, :2] @ np.array([[x0, x0, x1, x1], [y0, y1, y0, y1]]) + full[:2, 2:]
        (cx0, cy0), (cx1, cy1) = np.floor(corners.min(1)), np.ceil(corners.max(1)) + 1
        window = (
            slice(int(np.clip(cy0, 0, height)), int(np.clip(cy1, 0, height))),
            slice(int(np.clip(cx0, 0, width)), int(np.clip(cx1, 0, width))),
        )
    inverse = np.linalg.inv(full)
    xs, ys = _pixel_grid(height, width)
    xs, ys = xs[window], ys[window]
    tx = (inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]).astype(np.float32)
    ty = (inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]).astype(np.float32)
    return tx, ty, window


def _superellipse(u: np.ndarray, v: np.ndarray, power: int) -> np.ndarray:
    """u^p + v^p for an even integer p: below 1 inside an ellipse (p = 2) or a rounded rectangle (p >= 4)."""
    u2, v2 = u * u, v * v
    return u2 ** (power // 2) + v2 ** (power // 2)


def _segment_distance(tx: np.ndarray, ty: np.ndarray, a: tuple[float, float], b: tuple[float, float]):
    """Distance of every point to the segment a-b (for straps, bridges and temple arms)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((tx - ax) * dx + (ty - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(tx - (ax + t * dx), ty - (ay + t * dy))


# ---------------------------------------------------------------------------------------------- colour


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.08, 0.95))


def _niqab_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly black, sometimes dark navy/brown/maroon/green, occasionally grey or beige."""
    u = rng.random()
    if u < 0.55:
        return _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.03, 0.14))
    if u < 0.85:
        return _hsv(
            rng.choice([0.6, 0.07, 0.97, 0.35]) + rng.uniform(-0.03, 0.03), 0.5, rng.uniform(0.15, 0.4)
        )
    return _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.35), rng.uniform(0.35, 0.8))


def _medical_mask_colour(rng: np.random.Generator) -> np.ndarray:
    """Light blue surgical masks, white FFP masks, black and pastel cloth masks."""
    u = rng.random()
    if u < 0.45:
        return _hsv(rng.uniform(0.52, 0.58), rng.uniform(0.2, 0.45), rng.uniform(0.8, 0.95))
    if u < 0.7:
        return _hsv(rng.random(), rng.uniform(0.0, 0.05), rng.uniform(0.88, 0.98))
    if u < 0.85:
        return _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.2))
    return _hsv(rng.random(), rng.uniform(0.15, 0.4), rng.uniform(0.7, 0.95))


def _col(colour: np.ndarray) -> np.ndarray:
    """An RGB colour shaped [3, 1, 1] to broadcast over channel-first textures."""
    return np.asarray(colour, dtype=np.float32).reshape(3, 1, 1)


@lru_cache(maxsize=4)
def _noise_bank(side: int) -> np.ndarray:
    bank = np.random.default_rng(0x0A3F).standard_normal((side, side), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def noise_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Standard-normal pixel noise, float32 [H, W] (a read-only view).

    A window at a random offset into a fixed bank at least twice the size: per-pixel noise for the price of
    two random integers, which matters when every image of a training set needs its own noise. Windows at
    different offsets are distinct patterns; the bank itself is fixed, so results stay deterministic.
    """
    side = 256
    while side < 2 * max(height, width):
        side *= 2
    bank = _noise_bank(side)
    y, x = rng.integers(0, side - height + 1), rng.integers(0, side - width + 1)
    return bank[y : y + height, x : x + width]


def _fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Grey per-pixel noise [1, H, W] (weave, print grain)."""
    return noise_field(rng, *shape)[None] * np.float32(sigma)


def _wave(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray, min_period: float, max_period: float):
    """A sinusoid of random direction, period and phase over template coordinates."""
    angle, period = rng.uniform(0, math.pi), rng.uniform(min_period, max_period)
    k = 2 * math.pi / period
    return np.sin(tx * np.float32(k * math.cos(angle)) + ty * np.float32(k * math.sin(angle)) + rng.random())


def _random_texture(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """One of: flat, stripes, checker, gradient, blotches; float32 [3, H, W] in roughly 0..255."""
    c1, c2 = _col(_random_colour(rng)), _col(_random_colour(rng))
    family = rng.integers(5)
    if family == 0:  # flat
        t = np.zeros((1,) + tx.shape, np.float32)
    elif family == 1:  # stripes along a random direction
        t = (_wave(rng, tx, ty, 4.0, 12.0) > 0)[None].astype(np.float32)
    elif family == 2:  # checker
        period = rng.uniform(5.0, 14.0)
        t = ((np.floor(tx / period) + np.floor(ty / period)) % 2)[None].astype(np.float32)
    elif family == 3:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        along = (tx * math.cos(angle) + ty * math.sin(angle)) / TEMPLATE_SIZE
        t = np.clip(along - along.min(), 0.0, 1.0)[None]
    else:  # blotches: two low-frequency waves
        t = (0.5 + 0.25 * (_wave(rng, tx, ty, 10.0, 30.0) + _wave(rng, tx, ty, 10.0, 30.0)))[None]
    return c1 + (c2 - c1) * t + _fine_noise(rng, tx.shape, rng.uniform(0.0, 8.0))


def _fabric(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """A cloth colour with soft folds (low-frequency shading) and weave noise; float32 [3, H, W]."""
    shade = 1.0 + rng.uniform(0.04, 0.15) * _wave(rng, tx, ty, 15.0, 45.0)
    shade += rng.uniform(0.04, 0.15) * _wave(rng, tx, ty, 15.0, 45.0)
    # Dark cloth still shows its folds: lift the floor so black fabric is not a flat zero.
    return _col(np.maximum(colour, 12.0)) * shade[None] + _fine_noise(rng, tx.shape, rng.uniform(1.0, 5.0))


# ---------------------------------------------------------------------------------------------- shapes
# Each returns (hidden: bool [H, W], texture: float32 [3, H, W]); both from template coordinates only.

ShapeFn = Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _niqab(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hide everything outside a rounded slit around the eyes (brows to just under the lower lids)."""
    cx, cy = _EYE_MID
    half_width = rng.uniform(36.0, 46.0)
    above, below = rng.uniform(12.0, 18.0), rng.uniform(7.0, 11.0)
    dip = rng.uniform(0.0, 4.0)  # the lower edge sags a little over the nose bridge
    power = int(rng.choice([4, 6]))
    u = (tx - cx) / half_width
    v = ty - cy
    down = below + dip * np.clip(1.0 - u * u, 0.0, 1.0)
    vn = np.where(v < 0, v / above, v / down)
    hidden = _superellipse(u, vn, power) > 1.0
    return hidden, _fabric(rng, tx, ty, _niqab_colour(rng))


def _medical_mask(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cover from the nose bridge down past the chin, cheek to cheek, plus two ear straps."""
    cx = 56.0 + rng.uniform(-1.5, 1.5)
    top = rng.uniform(59.0, 65.0)  # nose tip is at y = 71.7, eyes at 51.6
    sag = rng.uniform(3.0, 9.0)  # the top edge drops towards the cheeks
    ax, ay = rng.uniform(40.0, 46.0), rng.uniform(34.0, 40.0)
    cy = rng.uniform(82.0, 86.0)
    u = (tx - cx) / ax
    top_edge = top + sag * u * u
    body = (ty >= top_edge) & ((u * u + ((ty - cy) / ay) ** 2) <= 1.0)
    strap_width = rng.uniform(0.8, 1.4)
    ear_y = rng.uniform(54.0, 64.0)
    strap_y = top + sag * 0.8 + rng.uniform(2.0, 6.0)
    half_top = ax * math.sqrt(max(0.0, 1.0 - ((strap_y - cy) / ay) ** 2)) - 1.0
    straps = (_segment_distance(tx, ty, (cx - half_top, strap_y), (-4.0, ear_y)) <= strap_width) | (
        _segment_distance(tx, ty, (cx + half_top, strap_y), (TEMPLATE_SIZE + 4.0, ear_y)) <= strap_width
    )
    colour = _medical_mask_colour(rng)
    tex = _fabric(rng, tx, ty, colour)
    # Horizontal pleats: three darker lines across the body.
    pleat_gap = rng.uniform(7.0, 10.0)
    below_edge = ty - top_edge
    pleat = np.zeros_like(below_edge, dtype=bool)
    for k in range(3):
        pleat |= np.abs(below_edge - pleat_gap * (k + 1.3)) < 0.8
    tex *= np.where(pleat, np.float32(0.8), np.float32(1.0))[None]
    strap_colour = _col(colour * rng.uniform(0.85, 1.0))
    tex = np.where((straps & ~body)[None], strap_colour, tex)
    return body | straps, tex


def _sunglasses(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two lenses on the eyes joined by a bridge, with temple arms running to the image sides."""
    rx, ry = rng.uniform(11.0, 15.0), rng.uniform(8.0, 12.0)
    power = int(rng.choice([2, 4]))
    lift = rng.uniform(-2.0, 1.0)
    rim = rng.uniform(0.0, 1.6)
    lenses = np.zeros_like(tx, dtype=bool)
    rims = np.zeros_like(tx, dtype=bool)
    for ex, ey in TEMPLATE_112[:2]:
        dx, dy = tx - ex, ty - (ey + lift)
        value = _superellipse(dx / rx, dy / ry, power)
        lenses |= value <= 1.0
        rims |= (_superellipse(dx / (rx + rim), dy / (ry + rim), power) <= 1.0) & (value > 1.0)
    (lx, ly), (rx_, ry_) = TEMPLATE_112[0], TEMPLATE_112[1]
    bar_y = (ly + ry_) / 2 + lift - ry * 0.35
    width = rng.uniform(0.9, 1.6)
    arm_y = (ly + ry_) / 2 + lift - ry * 0.4
    ear_y = arm_y + rng.uniform(-2.0, 4.0)
    frame = (
        (_segment_distance(tx, ty, (lx + rx * 0.8, bar_y), (rx_ - rx * 0.8, bar_y)) <= width)
        | (_segment_distance(tx, ty, (lx - rx * 0.9, arm_y), (-4.0, ear_y)) <= width)
        | (_segment_distance(tx, ty, (rx_ + rx * 0.9, arm_y), (TEMPLATE_SIZE + 4.0, ear_y)) <= width)
        | rims
    ) & ~lenses
    lens_colour = _col(_hsv(rng.random(), rng.uniform(0.0, 0.7), rng.uniform(0.04, 0.3)))
    frame_colour = _col(_hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.6), rng.choice([0.05, 0.3, 0.75])))
    # Lenses darken towards the top and carry one soft reflection each.
    gradient = np.clip(1.0 + (ty - (ly + lift)) / (3.0 * ry), 0.6, 1.4)
    hx, hy = rng.uniform(-0.5, 0.5) * rx, rng.uniform(-0.6, -0.1) * ry
    glint = np.exp(-(((tx - lx - hx) ** 2 + (ty - ly - lift - hy) ** 2) / 8.0))
    glint += np.exp(-(((tx - rx_ - hx) ** 2 + (ty - ry_ - lift - hy) ** 2) / 8.0))
    lens_tex = lens_colour * gradient[None] + (rng.uniform(20.0, 90.0) * glint)[None]
    tex = np.where(lenses[None], lens_tex, frame_colour) + _fine_noise(rng, tx.shape, 2.0)
    return lenses | frame, tex


def _blocks(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One to three rectangles (each with its own texture) somewhere on the face."""
    hidden = np.zeros_like(tx, dtype=bool)
    tex = np.zeros((3,) + tx.shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        w, h = rng.uniform(14.0, 44.0, size=2)
        x0, y0 = rng.uniform(18.0, 94.0) - w / 2, rng.uniform(28.0, 104.0) - h / 2
        block = (tx >= x0) & (tx < x0 + w) & (ty >= y0) & (ty < y0 + h)
        tex = np.where(block[None], _random_texture(rng, tx, ty), tex)
        hidden |= block
    return hidden, tex


def _blobs(rng: np.random.Generator, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One or two irregular ellipses (a hand, hair strand, scarf fold ...): radius modulated by harmonics."""
    hidden = np.zeros_like(tx, dtype=bool)
    tex = np.zeros((3,) + tx.shape, dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(22.0, 90.0), rng.uniform(30.0, 102.0)
        a, b = rng.uniform(10.0, 26.0, size=2)
        angle = rng.uniform(0, math.pi)
        c, s = math.cos(angle), math.sin(angle)
        u = ((tx - cx) * c + (ty - cy) * s) / a
        v = (-(tx - cx) * s + (ty - cy) * c) / b
        q = u * u + v * v
        near = q <= 1.36**2  # the harmonics below change the radius by at most 3 * 0.12
        phi = np.arctan2(v[near], u[near])
        radius = np.ones_like(phi)
        for k in (2, 3, 5):
            radius += rng.uniform(0.0, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
        blob = np.zeros_like(near)
        blob[near] = q[near] <= radius * radius
        tex = np.where(blob[None], _random_texture(rng, tx, ty), tex)
        hidden |= blob
    return hidden, tex


# Each type with a bound (x0, x1, y0, y1) in template coordinates on everything it can draw (None: anywhere).
_SHAPES: dict[str, tuple[ShapeFn, tuple[float, float, float, float] | None]] = {
    "niqab": (_niqab, None),
    "medical_mask": (_medical_mask, (-8.0, TEMPLATE_SIZE + 8.0, 50.0, TEMPLATE_SIZE + 24.0)),
    "sunglasses": (_sunglasses, (-8.0, TEMPLATE_SIZE + 8.0, 34.0, 68.0)),
    "blocks": (_blocks, None),
    "blobs": (_blobs, None),
}
assert tuple(_SHAPES) == OCCLUDER_TYPES


# ---------------------------------------------------------------------------------------------- public API


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or kind not in _SHAPES:
        raise ValueError(f"unknown occluder type {kind!r}; valid types are {', '.join(OCCLUDER_TYPES)}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"image must be a numpy uint8 array of shape [H, W, 3] (RGB), got {got}")


def is_grayscale(image: np.ndarray) -> bool:
    """True when the three channels of an RGB image are equal everywhere (a grayscale photograph)."""
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def to_luma(texture: np.ndarray) -> np.ndarray:
    """A channel-first RGB texture [3, H, W] in grey: ITU-R BT.601 luma, the weights PIL's "L" mode uses."""
    luma = 0.299 * texture[0] + 0.587 * texture[1] + 0.114 * texture[2]
    return np.broadcast_to(luma[None], texture.shape)


def apply_occluder(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    landmarks: np.ndarray | None = None,
    match_grayscale: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one occluder of type ``kind`` onto a copy of an aligned face.

    Args:
        image: uint8 [H, W, 3] RGB aligned face (any size; the template is scaled to it).
        kind: one of :data:`OCCLUDER_TYPES`.
        rng: the occluder's own generator: shape jitter, colour and texture come from it alone.
        landmarks: optional float [5, 2] (x, y) landmarks of this face in template order; when given the
            occluder follows them (posed faces), otherwise the aligned template is assumed.
        match_grayscale: on a grayscale photograph draw the occluder in grey too. A coloured occluder on a grey
            face is an image no camera takes, and it lets a visibility head find the occluder by colour alone
            (LFW as distributed in some copies is grey). The colours are still drawn, so the same generator
            gives the same shape either way.

    Returns:
        (occluded uint8 [H, W, 3], visibility float32 [H, W]) with visibility 0 exactly on the written pixels.
    """
    _check_kind(kind)
    _check_image(image)
    height, width = image.shape[:2]
    shape, box = _SHAPES[kind]
    tx, ty, window = _template_coordinates(height, width, landmarks, rng, box)
    visibility = np.ones((height, width), np.float32)
    if tx.size == 0:  # the occluder lies entirely outside this image
        return image.copy(), visibility
    hidden, texture = shape(rng, tx, ty)
    if match_grayscale and is_grayscale(image):
        texture = to_luma(texture)
    # Channel-first select, so the per-pixel choice broadcasts over the leading (channel) axis.
    region = image[window].transpose(2, 0, 1)
    drawn = np.where(hidden[None], np.clip(texture, 0.0, 255.0).astype(np.uint8), region)
    out = image.copy()
    out[window] = drawn.transpose(1, 2, 0)
    visibility[window] = ~hidden
    return out, visibility


def validate_occluder_probabilities(probabilities: Mapping[str, float]) -> dict[str, float]:
    """Check a {type: probability} mapping (known types, finite, >= 0, sum <= 1) and return it as a dict."""
    if not isinstance(probabilities, Mapping):
        raise ValueError(
            f"occluder probabilities must be a mapping {{type: probability}}, got {probabilities!r}"
        )
    checked: dict[str, float] = {}
    for kind, p in probabilities.items():
        _check_kind(kind)
        p = float(p)
        if not math.isfinite(p) or p < 0.0:
            raise ValueError(f"occluder probability for {kind!r} must be finite and >= 0, got {p}")
        checked[kind] = p
    total = sum(checked.values())
    if total > 1.0 + 1e-9:
        raise ValueError(
            f"occluder probabilities sum to {total:.4f} > 1; they are per-image chances of each type "
            "(the remainder is the chance of a clean image)"
        )
    return checked


class RandomOccluder:
    """Draw at most one occluder per image: type ``k`` with probability ``probabilities[k]``, else none.

    ``RandomOccluder({"niqab": 0.2, "medical_mask": 0.2})`` leaves 60 % of images clean. Calling it with an
    image and a generator returns ``(image, visibility, kind)``; ``kind`` is None and visibility all ones for
    a clean draw. Building block for the training augmentation of real faces as well as the synthetic data.
    """

    def __init__(self, probabilities: Mapping[str, float], match_grayscale: bool = False) -> None:
        self.probabilities = validate_occluder_probabilities(probabilities)
        self.match_grayscale = bool(match_grayscale)
        self._kinds = list(self.probabilities)
        self._cumulative = np.cumsum([self.probabilities[k] for k in self._kinds])

    def choose(self, rng: np.random.Generator) -> str | None:
        """Draw the occluder type for one image (None: clean)."""
        index = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        return self._kinds[index] if index < len(self._kinds) else None

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator, landmarks: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, str | None]:
        kind = self.choose(rng)
        if kind is None:
            _check_image(image)
            return image.copy(), np.ones(image.shape[:2], dtype=np.float32), None
        occluded, visibility = apply_occluder(image, kind, rng, landmarks, self.match_grayscale)
        return occluded, visibility, kind

    def __repr__(self) -> str:
        return f"RandomOccluder({self.probabilities}, match_grayscale={self.match_grayscale})"
