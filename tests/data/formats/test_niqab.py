"""NiqabMaskDataset and the area averaging of masks to the feature grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_train_config
from hydra.utils import instantiate
from PIL import Image

from oaml.data.formats.decode import area_downsample
from oaml.data.formats.niqab import NiqabMaskDataset, split_names
from oaml.data.synthetic.datasets import SyntheticFaces
from oaml.data.synthetic.export import export_synthetic


def test_area_downsample_is_exact_area_averaging():
    mask = np.zeros((112, 112), dtype=np.float32)
    mask[:, 56:] = 1.0  # right half visible
    grid = area_downsample(mask, (7, 7))
    assert np.allclose(grid, np.tile([0, 0, 0, 0.5, 1, 1, 1], (7, 1)))
    # 10 -> 3: cells cover 10/3 pixels, so pixel 3 is split 1/3 : 2/3 between cells 0 and 1
    line = np.zeros((1, 10), dtype=np.float32)
    line[0, 3] = 1.0
    assert np.allclose(area_downsample(line, (1, 3)), [[0.1, 0.2, 0.0]])
    rng = np.random.default_rng(0)
    noise = rng.random((37, 53)).astype(np.float32)
    assert np.isclose(area_downsample(noise, (7, 5)).mean(), noise.mean(), atol=1e-6)


def _write_pair(root, name, hidden_columns, size=112, image_ext=".jpg"):
    """Image: red where hidden, green where visible; mask: 0 hidden, 255 visible (left `hidden_columns`)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, :hidden_columns] = (255, 0, 0)
    image[:, hidden_columns:] = (0, 255, 0)
    mask = np.full((size, size), 255, dtype=np.uint8)
    mask[:, :hidden_columns] = 0
    (root / "kept_faces").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "kept_faces" / f"{name}{image_ext}", quality=98)
    Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")


def test_items_without_augmentation(tmp_path):
    _write_pair(tmp_path, "face_b", 56)
    _write_pair(tmp_path, "face_a", 32, size=224)  # another size: resized to 112
    dataset = NiqabMaskDataset(tmp_path, split="all", augment=False)
    assert dataset.names == ["face_a", "face_b"]
    image, mask, index = dataset[1]
    assert index == 1 and image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert mask.dtype == torch.float32 and mask.shape == (1, 7, 7)
    assert torch.allclose(mask[0], torch.tensor([0, 0, 0, 0.5, 1, 1, 1]).expand(7, 7), atol=1e-6)
    image_a, mask_a, _ = dataset[0]
    assert image_a.shape == (3, 112, 112)
    # 32 of 224 columns hidden = 16 of 112 = the first feature column exactly
    assert torch.allclose(mask_a[0, :, 0], torch.zeros(7), atol=1e-3)
    assert torch.allclose(mask_a[0, :, 1:], torch.ones(7, 6), atol=1e-3)


def test_augmentation_moves_image_and_mask_together(tmp_path):
    _write_pair(tmp_path, "face", 40)
    torch.manual_seed(0)
    dataset = NiqabMaskDataset(tmp_path, split="all", augment=True, feature_size=(14, 14))
    flipped = 0
    for _ in range(12):
        image, mask, _ = dataset[0]
        red = (image[0].float() > image[1].float()).float().numpy()  # pixels showing the hidden region
        hidden_from_image = area_downsample(red, (14, 14))
        assert np.abs((1 - mask[0].numpy()) - hidden_from_image).max() < 0.15
        flipped += bool(mask[0, :, -1].mean() < mask[0, :, 0].mean())
    assert 0 < flipped < 12  # both orientations occur


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    names = [f"n{i:02d}" for i in range(20)]
    train = split_names(names, "train", 0.25, seed=3)
    val = split_names(names, "val", 0.25, seed=3)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == names
    assert split_names(list(reversed(names)), "val", 0.25, seed=3) == val
    assert split_names(names, "val", 0.25, seed=4) != val
    with pytest.raises(ValueError, match="split must be"):
        split_names(names, "test", 0.1, 0)
    # Growing the set by one image moves at most one earlier name between the splits.
    grown = split_names([*names, "n99"], "val", 0.25, seed=3)
    assert len(set(val) ^ (set(grown) - {"n99"})) <= 1

    for name in names[:4]:
        _write_pair(tmp_path, name, 10)
    dataset = NiqabMaskDataset(tmp_path, split="val", val_fraction=0.25, split_seed=1, augment=False)
    assert dataset.names == split_names(names[:4], "val", 0.25, seed=1) and len(dataset) == 1


def test_orphans_warn_or_error(tmp_path):
    for name in ("a", "b", "c"):
        _write_pair(tmp_path, name, 10)
    (tmp_path / "masks" / "b_mask.png").unlink()
    Image.new("L", (112, 112), 255).save(tmp_path / "masks" / "zz_mask.png")
    expected = r"1 images without a mask \(first: \['b'\]\) and 1 masks without an image \(first: \['zz'\]\)"
    with pytest.raises(ValueError, match=expected):
        NiqabMaskDataset(tmp_path, split="all", orphans="error")
    with pytest.warns(UserWarning, match=expected):
        dataset = NiqabMaskDataset(tmp_path, split="all")
    assert dataset.names == ["a", "c"]


def test_unreadable_files_are_named(tmp_path):
    for name in ("good", "bad_image", "bad_mask"):
        _write_pair(tmp_path, name, 10)
    # Not an image at all: found by the start-up size check (file headers), before any training.
    (tmp_path / "kept_faces" / "bad_image.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot read image file .*kept_faces/bad_image\.jpg"):
        NiqabMaskDataset(tmp_path, split="all", augment=False)
    (tmp_path / "masks" / "bad_mask_mask.png").write_bytes(b"not a png")
    _write_pair(tmp_path, "bad_image", 10)
    with pytest.raises(ValueError, match=r"cannot read image file .*masks/bad_mask_mask\.png"):
        NiqabMaskDataset(tmp_path, split="all", augment=False)
    # A truncated JPEG keeps a valid header: it is named when it is read.
    _write_pair(tmp_path, "bad_mask", 10)
    whole = (tmp_path / "kept_faces" / "bad_image.jpg").read_bytes()
    (tmp_path / "kept_faces" / "bad_image.jpg").write_bytes(whole[: len(whole) // 2])
    dataset = NiqabMaskDataset(tmp_path, split="all", augment=False)
    assert dataset.names == ["bad_image", "bad_mask", "good"]
    with pytest.raises(ValueError, match=r"kept_faces/bad_image\.jpg"):
        dataset[0]
    assert dataset[2][1].shape == (1, 7, 7)


def test_missing_folders_and_no_pairs(tmp_path):
    with pytest.raises(FileNotFoundError, match="kept_faces does not exist"):
        NiqabMaskDataset(tmp_path)
    (tmp_path / "kept_faces").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="no image in .* has a mask"):
        NiqabMaskDataset(tmp_path)


def test_synthetic_export_niqab_masks(tmp_path):

    out = tmp_path / "out"
    export_synthetic(
        out, num_identities=3, images_per_identity=1, num_pairs=2, pair_identities=2, num_niqab=3
    )
    dataset = NiqabMaskDataset(out / "niqab", split="all", augment=False, orphans="error")
    assert dataset.names == ["00000_0001", "00001_0001", "00002_0001"]
    faces = SyntheticFaces(3, 1, seed=0, occluders={})
    for index, name in enumerate(dataset.names):
        image, mask, item_index = dataset[index]
        identity, n = (int(part) for part in name.split("_"))
        _, visibility = faces.render(identity, n, "niqab")
        assert item_index == index and image.shape == (3, 112, 112)
        assert np.allclose(mask[0].numpy(), area_downsample(visibility, (7, 7)), atol=1e-5)
        # a niqab leaves the eye band (template y ~52: feature row 3) visible and hides the mouth (row 5)
        assert mask[0, 3, 2:5].mean() > 0.5 and mask[0, 5:, :].mean() < 0.1


@pytest.mark.parametrize("image_size,cells", [(112, 7), (224, 14)])
def test_mask_grid_follows_the_backbone_input(tmp_path, image_size, cells):
    # Left 32 of 112 pixels hidden: exactly the first two 16-pixel columns of the 7x7 grid (4 of the 14x14 grid).
    _write_pair(tmp_path, "a", 32)
    dataset = NiqabMaskDataset(tmp_path, split="all", augment=False, image_size=image_size)
    image, mask, _ = dataset[0]
    assert image.shape == (3, image_size, image_size) and mask.shape == (1, cells, cells)
    hidden = cells * 2 // 7
    assert torch.allclose(mask[0, :, :hidden], torch.zeros(cells, hidden), atol=1e-3)
    assert torch.allclose(mask[0, :, hidden:], torch.ones(cells, cells - hidden), atol=1e-3)


def test_the_held_out_split_does_not_follow_the_training_seed(tmp_path) -> None:
    # The split has its own seed: two runs of a seed sweep hold out the same faces.
    for i in range(20):
        _write_pair(tmp_path, f"n{i:02d}", hidden_columns=20, size=32)
    chosen = []
    for seed in (1, 2):
        cfg = compose_train_config(
            tmp_path / f"run{seed}", [f"seed={seed}", "masks=niqab", f"data.masks.root={tmp_path}"]
        )
        train_split = instantiate(cfg.data.masks)
        held_out = instantiate(cfg.val.mask_sets.niqab)
        assert not set(train_split.names) & set(held_out.names)
        assert len(held_out) == 2 and held_out.augment is False
        chosen.append(held_out.names)
    assert chosen[0] == chosen[1]
