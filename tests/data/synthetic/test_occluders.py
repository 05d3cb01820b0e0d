from __future__ import annotations

import numpy as np
import pytest

from oaml.data.synthetic.face_template import TEMPLATE_112, template_landmarks
from oaml.data.synthetic.occluders import (
    OCCLUDER_TYPES,
    RandomOccluder,
    apply_occluder,
    is_grayscale,
    similarity_from_landmarks,
    validate_occluder_probabilities,
)


def _constant(value: int, size: int = 112) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def _at(mask: np.ndarray, point, size: int = 112) -> float:
    x, y = np.round(np.asarray(point) * size / 112).astype(int)
    return float(mask[y, x])


def test_template_constants_and_scaling():
    assert TEMPLATE_112[0].tolist() == [38.2946, 51.6963]
    assert TEMPLATE_112[4].tolist() == [70.7299, 92.2041]
    np.testing.assert_allclose(template_landmarks(224), TEMPLATE_112 * 2)
    np.testing.assert_allclose(template_landmarks(), TEMPLATE_112)
    with pytest.raises(ValueError, match="image_size"):
        template_landmarks(0)


@pytest.mark.parametrize("size", [112, 80])
@pytest.mark.parametrize("kind", OCCLUDER_TYPES)
def test_mask_is_zero_exactly_where_occluder_pixels_are_written(kind, size):
    # The occluder never depends on the face: drawn with the same generator on a black and on a white image,
    # its pixels are identical, and every other pixel keeps the background. So "out_black == out_white"
    # marks the drawn pixels exactly, and it must coincide with mask == 0.
    out_black, mask_black = apply_occluder(_constant(0, size), kind, np.random.default_rng(7))
    out_white, mask_white = apply_occluder(_constant(255, size), kind, np.random.default_rng(7))
    assert mask_black.dtype == np.float32 and mask_black.shape == (size, size)
    assert set(np.unique(mask_black)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask_black, mask_white)
    drawn = (out_black == out_white).all(axis=2)
    np.testing.assert_array_equal(drawn, mask_black == 0)
    assert (out_black[mask_black == 1] == 0).all() and (out_white[mask_white == 1] == 255).all()
    assert 0.005 < (mask_black == 0).mean() < 0.95


def test_occluder_is_deterministic_and_varies_with_the_generator():
    face = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    original = face.copy()
    a = apply_occluder(face, "blobs", np.random.default_rng(3))
    b = apply_occluder(face, "blobs", np.random.default_rng(3))
    c = apply_occluder(face, "blobs", np.random.default_rng(4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(face, original)  # the input is never modified


@pytest.mark.parametrize("seed", range(6))
def test_niqab_leaves_only_an_eye_band_visible(seed):
    _, mask = apply_occluder(_constant(128), "niqab", np.random.default_rng(seed))
    left_eye, right_eye, nose, mouth_left, mouth_right = TEMPLATE_112
    for eye in (left_eye, right_eye):
        for dx in (-4, 0, 4):
            assert _at(mask, eye + (dx, 0)) == 1.0
    for covered in (nose, mouth_left, mouth_right, (56.0, 15.0), (56.0, 108.0), (3.0, 51.6)):
        assert _at(mask, covered) == 0.0
    assert 0.1 < mask.mean() < 0.45
    rows = np.nonzero(mask.any(axis=1))[0]
    assert rows.min() > 25 and rows.max() < 70  # a band, not the upper half


@pytest.mark.parametrize("seed", range(6))
def test_medical_mask_hides_nose_and_mouth_and_keeps_the_eyes(seed):
    _, mask = apply_occluder(_constant(128), "medical_mask", np.random.default_rng(seed))
    left_eye, right_eye, nose, mouth_left, mouth_right = TEMPLATE_112
    for covered in (nose, mouth_left, mouth_right, (56.0, 100.0)):
        assert _at(mask, covered) == 0.0
    for visible in (left_eye, right_eye, (56.0, 30.0)):
        assert _at(mask, visible) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_sunglasses_hide_the_eyes_and_keep_nose_and_mouth(seed):
    _, mask = apply_occluder(_constant(128), "sunglasses", np.random.default_rng(seed))
    left_eye, right_eye, nose, mouth_left, mouth_right = TEMPLATE_112
    for covered in (left_eye, right_eye):
        assert _at(mask, covered) == 0.0
    for visible in (nose, mouth_left, mouth_right, (56.0, 15.0)):
        assert _at(mask, visible) == 1.0


def test_occluder_follows_given_landmarks():
    # A face shifted 20 px right and 10 px down inside a 160 px image: the sunglasses must move with it.
    shifted = TEMPLATE_112 + (20.0, 10.0)
    _, mask = apply_occluder(_constant(0, 160), "sunglasses", np.random.default_rng(1), landmarks=shifted)
    for eye in shifted[:2]:
        assert mask[int(round(eye[1])), int(round(eye[0]))] == 0.0
    _, aligned = apply_occluder(_constant(0, 160), "sunglasses", np.random.default_rng(1))
    # The glasses' rows centre on the eye line they were placed from: the given landmarks, or else the
    # template scaled to the image size.
    assert abs(np.nonzero(mask == 0)[0].mean() - shifted[:2, 1].mean()) < 4.0
    assert abs(np.nonzero(aligned == 0)[0].mean() - TEMPLATE_112[:2, 1].mean() * 160 / 112) < 4.0


def test_similarity_from_landmarks_recovers_a_known_transform():
    angle, scale = 0.2, 1.3
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = similarity_from_landmarks(TEMPLATE_112 @ rotation.T + (5.0, -3.0))
    np.testing.assert_allclose(matrix[:, :2], rotation, atol=1e-12)
    np.testing.assert_allclose(matrix[:, 2], (5.0, -3.0), atol=1e-9)
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        similarity_from_landmarks(np.zeros((4, 2)))


def test_random_occluder_draws_types_with_the_given_probabilities():
    occluder = RandomOccluder({"niqab": 0.3, "sunglasses": 0.2})
    rng = np.random.default_rng(0)
    draws = [occluder.choose(rng) for _ in range(4000)]
    assert abs(draws.count("niqab") / 4000 - 0.3) < 0.03
    assert abs(draws.count("sunglasses") / 4000 - 0.2) < 0.03
    assert abs(draws.count(None) / 4000 - 0.5) < 0.03


def test_random_occluder_returns_clean_copy_or_occluded_image():
    face = _constant(90)
    clean = RandomOccluder({})
    image, mask, kind = clean(face, np.random.default_rng(0))
    assert kind is None and image is not face
    np.testing.assert_array_equal(image, face)
    assert (mask == 1).all() and mask.dtype == np.float32
    image, mask, kind = RandomOccluder({"medical_mask": 1.0})(face, np.random.default_rng(0))
    assert kind == "medical_mask" and (mask == 0).any()
    assert (image[mask == 1] == 90).all()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="niqab, medical_mask"):
        apply_occluder(_constant(0), "hat", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown occluder type 'hat'"):
        RandomOccluder({"hat": 0.1})
    with pytest.raises(ValueError, match="sum to 1.2"):
        validate_occluder_probabilities({"niqab": 0.6, "blobs": 0.6})
    with pytest.raises(ValueError, match=">= 0"):
        validate_occluder_probabilities({"niqab": -0.1})
    with pytest.raises(ValueError, match="finite"):
        validate_occluder_probabilities({"niqab": float("nan")})
    with pytest.raises(ValueError, match=r"uint8 array of shape \[H, W, 3\]"):
        apply_occluder(np.zeros((112, 112, 3), np.float32), "niqab", np.random.default_rng(0))


@pytest.mark.parametrize("kind", OCCLUDER_TYPES)
def test_match_grayscale_draws_grey_occluders_on_grey_faces_only(kind):
    rng = np.random.default_rng(3)
    grey = np.repeat(rng.integers(40, 200, size=(112, 112, 1), dtype=np.uint8), 3, axis=2)
    colour = rng.integers(40, 200, size=(112, 112, 3), dtype=np.uint8)
    as_drawn, mask = apply_occluder(grey, kind, np.random.default_rng(11))
    matched, matched_mask = apply_occluder(grey, kind, np.random.default_rng(11), match_grayscale=True)
    hidden = mask == 0
    # the same occluder in the same place; only its colour goes
    np.testing.assert_array_equal(mask, matched_mask)
    np.testing.assert_array_equal(matched[~hidden], grey[~hidden])
    assert is_grayscale(matched)
    # grey is the occluder's luma (BT.601): within rounding, more only where a channel saturated at 0 or 255
    luma = as_drawn[hidden].astype(float) @ np.array([0.299, 0.587, 0.114])
    error = np.abs(matched[hidden][:, 0] - luma)
    assert error.mean() <= 0.6 and error.max() <= 4.0
    # a colour face keeps the coloured occluder
    on_colour, _ = apply_occluder(colour, kind, np.random.default_rng(11), match_grayscale=True)
    np.testing.assert_array_equal(on_colour, apply_occluder(colour, kind, np.random.default_rng(11))[0])
