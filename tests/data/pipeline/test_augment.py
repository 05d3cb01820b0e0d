"""Main-stream augmentations: what each operation does to image and visibility, and worker-safe randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from oaml.data.pipeline.augment import (
    AdaFaceAugment,
    AlignmentJitter,
    Chain,
    OccluderAugment,
    random_crop_box,
)


def _face(height=112, width=112):
    """A textured test image with a distinct value in every column, and all-ones visibility."""
    columns = torch.arange(width, dtype=torch.int32) * 2 + 10
    rows = torch.arange(height, dtype=torch.int32)[:, None] % 7
    image = torch.stack(
        [(columns + rows) % 256, (columns * 3 + rows) % 256, torch.full((height, width), 128)]
    )
    return image.to(torch.uint8), torch.ones((1, height, width), dtype=torch.float32)


def test_crop_with_zero_padding_keeps_a_box_in_place():
    torch.manual_seed(0)
    augment = AdaFaceAugment(crop_prob=1.0, low_res_prob=0.0, photometric_prob=0.0, flip=False)
    image, visibility = _face()
    image = image.clamp(min=1)  # zero only where the crop blacks out
    areas = []
    for _ in range(20):
        out, vis = augment(image, visibility)
        kept = vis[0] > 0
        rows, cols = torch.nonzero(kept, as_tuple=True)
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert bool(kept[box].all()) and int(kept.sum()) == kept[box].numel()  # one rectangle
        assert torch.equal(out[:, box[0], box[1]], image[:, box[0], box[1]])  # not moved, not resized
        assert bool((out[:, ~kept] == 0).all()) and bool(((out > 0).any(0) == kept).all())
        areas.append(kept.float().mean().item())
    assert min(areas) >= 0.19 and max(areas) <= 1.0 and np.std(areas) > 0.05


def test_random_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = random_crop_box(112, 112, rng)
        assert top >= 0 and top + h <= 112 and left >= 0 and left + w <= 112
        assert 0.19 * 112 * 112 <= h * w <= 112 * 112
        assert 0.74 <= w / h <= 1.35


def test_flip_moves_visibility_with_the_image():
    torch.manual_seed(0)
    augment = AdaFaceAugment(crop_prob=0.0, low_res_prob=0.0, photometric_prob=0.0, flip=True)
    image, visibility = _face()
    visibility[:, :, :30] = 0.0  # left side hidden
    flips = 0
    for _ in range(40):
        out, vis = augment(image, visibility)
        if torch.equal(out, image.flip(-1)):
            flips += 1
            assert torch.equal(vis, visibility.flip(-1))
        else:
            assert torch.equal(out, image) and torch.equal(vis, visibility)
    assert 8 < flips < 32


def test_low_resolution_and_photometric_leave_visibility_alone():
    torch.manual_seed(0)
    image, visibility = _face()
    visibility[:, 50:60] = 0.25
    for kwargs in ({"low_res_prob": 1.0}, {"photometric_prob": 1.0}):
        augment = AdaFaceAugment(
            **{"crop_prob": 0.0, "low_res_prob": 0.0, "photometric_prob": 0.0, **kwargs}, flip=False
        )
        changed = 0
        for _ in range(5):
            out, vis = augment(image, visibility)
            assert out.dtype == torch.uint8 and out.shape == image.shape and vis is visibility
            changed += not torch.equal(out, image)
        assert changed >= 4


def test_photometric_brightness_scales_pixels():
    rng = np.random.default_rng(0)
    image = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    outs = {int(AdaFaceAugment.photometric(image, rng)[0, 0, 0]) for _ in range(20)}
    assert min(outs) < 90 and max(outs) > 110  # factors in [0.5, 1.5] reach both directions


def test_same_seed_same_draws_other_seed_other_draws():
    image, visibility = _face()

    def run(torch_seed, seed=0):
        torch.manual_seed(torch_seed)
        augment = AdaFaceAugment(crop_prob=0.5, low_res_prob=0.5, photometric_prob=0.5, seed=seed)
        return [augment(image, visibility)[0] for _ in range(6)]

    first, again, other_torch, other_seed = run(7), run(7), run(8), run(7, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other_torch))
    assert not all(torch.equal(a, b) for a, b in zip(first, other_seed))


class _SameImage(Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 8

    def __getitem__(self, index):
        image, visibility = _face(16, 16)
        return self.transform(image, visibility)[1]


def test_dataloader_workers_draw_different_numbers():
    torch.manual_seed(0)
    augment = AdaFaceAugment(crop_prob=1.0, low_res_prob=0.0, photometric_prob=0.0, flip=False)
    augment(*_face(16, 16))  # the parent's generator exists before the workers fork
    loader = DataLoader(_SameImage(augment), batch_size=1, num_workers=2, shuffle=False)
    masks = [batch[0] for batch in loader]
    # items 0, 2, 4.. come from worker 0 and 1, 3, 5.. from worker 1: their first draws must differ
    assert not torch.equal(masks[0], masks[1])
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 4


def test_occluder_augment_multiplies_visibility():
    torch.manual_seed(0)
    image, visibility = _face()
    visibility[:, :10] = 0.0
    out, vis = OccluderAugment({"medical_mask": 1.0})(image, visibility)
    hidden = vis[0] == 0
    assert out.dtype == torch.uint8 and vis.dtype == torch.float32 and vis.shape == (1, 112, 112)
    assert bool((vis[:, :10] == 0).all())  # the incoming occlusion stays
    newly_hidden = hidden[10:]
    assert 0.05 < newly_hidden.float().mean() < 0.8
    assert bool((out[:, 10:][:, ~newly_hidden] == image[:, 10:][:, ~newly_hidden]).all())
    assert (out[:, 10:][:, newly_hidden] != image[:, 10:][:, newly_hidden]).any(0).float().mean() > 0.9
    # the mask follows the template: a medical mask covers the mouth (template y 92), not the eyes (y 52)
    assert bool(hidden[92, 56]) and not bool(hidden[52, 38])

    clean = OccluderAugment({"niqab": 0.0})
    out, vis = clean(image, visibility)
    assert out is image and vis is visibility


def test_chain_composes_and_bad_input_is_rejected():
    torch.manual_seed(0)
    chain = Chain(
        [
            OccluderAugment({"sunglasses": 1.0}),
            AdaFaceAugment(crop_prob=0, low_res_prob=0, photometric_prob=0),
        ]
    )
    out, vis = chain(*_face())
    assert out.shape == (3, 112, 112) and float(vis.mean()) < 1.0
    image, visibility = _face()
    with pytest.raises(ValueError, match="image must be a torch.uint8 tensor"):
        chain(image.float(), visibility)
    with pytest.raises(ValueError, match=r"visibility must be a torch.float32 tensor \[1, 112, 112\]"):
        chain(image, visibility[:, :50])
    with pytest.raises(ValueError, match="crop_prob must be a probability"):
        AdaFaceAugment(crop_prob=1.5)


def _marked_face():
    """A mid-grey face with one bright 40x40 square off-centre, hidden in the visibility: an occluder whose
    pixels and mask must move together."""
    image = torch.full((3, 112, 112), 90, dtype=torch.uint8)
    visibility = torch.ones((1, 112, 112), dtype=torch.float32)
    image[:, 20:60, 50:90] = 250
    visibility[:, 20:60, 50:90] = 0.0
    return image, visibility


def test_alignment_jitter_moves_visibility_with_the_image():
    torch.manual_seed(0)
    jitter = AlignmentJitter(prob=1.0, seed=3)
    image, visibility = _marked_face()
    shifts, ious, ious_unmoved = [], [], []
    for _ in range(30):
        out, vis = jitter(image, visibility)
        assert out.dtype == torch.uint8 and vis.dtype == torch.float32 and vis.shape == visibility.shape
        assert set(vis.unique().tolist()) <= {0.0, 1.0}  # exact masks stay exact
        bright = out[0] > 170
        border = out[0] == 0
        hidden = vis[0] == 0
        assert bool(hidden[border].all())  # what the warp brings in is black and hidden
        square = hidden & ~border
        ious.append(float((bright & square).sum() / (bright | square).sum()))
        unmoved = visibility[0] == 0
        ious_unmoved.append(float((bright & unmoved).sum() / (bright | unmoved).sum()))
        rows, cols = torch.nonzero(bright, as_tuple=True)
        shifts.append(float(torch.hypot(rows.float().mean() - 39.5, cols.float().mean() - 69.5)))
    # the warp moves the face by a few pixels (at most ~10 deg about the centre + 6.7 px shift + 10 % scale)
    assert max(shifts) <= 15.0 and np.mean(shifts) > 1.0
    # the occluder's pixels and its warped mask land in the same place (only interpolated edges differ), which
    # the mask left where it was would not
    assert min(ious) > 0.88, min(ious)
    assert np.mean(ious) > np.mean(ious_unmoved) + 0.1, (np.mean(ious), np.mean(ious_unmoved))


def test_alignment_jitter_is_seeded_and_off_at_prob_zero():
    image, visibility = _marked_face()
    off = AlignmentJitter(prob=0.0)
    out, vis = off(image, visibility)
    assert torch.equal(out, image) and torch.equal(vis, visibility)
    torch.manual_seed(5)
    first = AlignmentJitter(prob=1.0, seed=7)(image, visibility)
    torch.manual_seed(5)
    again = AlignmentJitter(prob=1.0, seed=7)(image, visibility)
    torch.manual_seed(5)
    other = AlignmentJitter(prob=1.0, seed=8)(image, visibility)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize(
    ("key", "value"), [("prob", 1.5), ("max_scale", 1.0), ("max_shift", 0.7), ("max_rotation", -1.0)]
)
def test_alignment_jitter_rejects_bad_arguments_by_name(key, value):
    with pytest.raises(ValueError, match=f"AlignmentJitter {key}"):
        AlignmentJitter(**{key: value})
