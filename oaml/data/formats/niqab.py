"""The mask stream: face images with pixel visibility masks, for the occlusion head's supervision.

Layout (as the niqab set ships and as `oaml.data.synthetic.export` writes it): `root/kept_faces/{name}.jpg`
with `root/masks/{name}_mask.png`, the mask grayscale with 255 where the face is visible and 0 where it is
hidden. The occlusion head predicts visibility on the backbone's feature grid (7x7 for 112x112 input), so
each mask is brought to that grid by exact area averaging: a cell's target is the visible fraction of the
image region it covers. Geometric augmentation (flip, crop) is applied to image and mask together at pixel
resolution, before the averaging, so the target always describes the augmented image.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from oaml.data.formats.decode import (
    IMAGE_EXTENSIONS,
    area_downsample,
    load_image_rgb,
    load_mask,
    to_chw_tensor,
)
from oaml.data.item_rng import WorkerSeededGenerator
from oaml.errors import ConfigError, DataError, MissingFileError

__all__ = ["NiqabMaskDataset", "split_names"]


def split_names(names: list[str], split: str, val_fraction: float, seed: int) -> list[str]:
    """Deterministic train/val split, stable as a data set grows: names are ranked by a hash of
    (`seed`, name) and the round(n * val_fraction) lowest are validation. The same names and seed always
    give the same split, and adding a few images moves at most as many existing names between the splits
    (a permutation of the sorted names would reshuffle all of them and leak validation faces into training)."""
    if split not in ("train", "val", "all"):
        raise ConfigError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(names)
    if split == "all":
        return ordered
    rank = sorted(
        ordered, key=lambda name: hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    )
    n_val = round(len(ordered) * val_fraction)
    chosen = set(rank[:n_val] if split == "val" else rank[n_val:])
    return [name for name in ordered if name in chosen]


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image file's header; an unreadable file is named."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot read image file {path}: {error}") from error


class NiqabMaskDataset(Dataset):
    """Images with visibility masks; item (image uint8 [3, S, S] RGB, mask float32 [1, fh, fw] in [0, 1], index).

    `index` is the item's position in this dataset (`names[index]` is its file stem). `split_seed` decides
    which faces are held out (`split="val"`) and must stay the same across runs, whatever their training
    seed: a seed sweep would otherwise train on faces that other runs validate on. `seed` drives the
    augmentation only. Images (and masks) of another size are resized to `image_size`. With `augment`, a
    horizontal flip (probability 0.5) and a random crop of `crop_scale` of the side, resized back, move image
    and mask together; use `augment=False` for validation. Every mask must have its image's size (checked
    from the file headers at start-up: `DataError` naming the files). Grey levels are fractional visibility:
    255 visible, 0 hidden, 128 half visible (a thin veil, an anti-aliased edge); a feature cell's target is
    the mean over its pixels. Images without a mask and masks without an image are listed by name:
    `orphans="warn"` warns with their count and skips them, `orphans="error"` raises.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "val", "all"] = "train",
        val_fraction: float = 0.1,
        seed: int = 0,
        split_seed: int = 0,
        image_dir: str = "kept_faces",
        mask_dir: str = "masks",
        mask_suffix: str = "_mask",
        mask_ext: str = ".png",
        orphans: Literal["warn", "error"] = "warn",
        feature_size: tuple[int, int] | None = None,
        augment: bool = True,
        image_size: int = 112,
        crop_scale: tuple[float, float] = (0.85, 1.0),
    ) -> None:
        if orphans not in ("warn", "error"):
            raise ConfigError(f"orphans must be 'warn' or 'error', got {orphans!r}")
        if not (0.0 < crop_scale[0] <= crop_scale[1] <= 1.0):
            raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.root = Path(root)
        self.image_root = self.root / image_dir
        self.mask_root = self.root / mask_dir
        for folder, what in ((self.image_root, "image_dir"), (self.mask_root, "mask_dir")):
            if not folder.is_dir():
                raise MissingFileError(f"mask dataset folder {folder} does not exist (check root and {what})")
        self.mask_suffix, self.mask_ext = mask_suffix, mask_ext
        self.image_size = int(image_size)
        if feature_size is None:  # the IResNet feature map: input / 16 (7x7 at 112, 14x14 at 224)
            if self.image_size % 16:
                raise ConfigError(
                    f"image_size {image_size} is not a multiple of 16; give feature_size explicitly"
                )
            feature_size = (self.image_size // 16, self.image_size // 16)
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))
        self.augment = augment
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))

        images = self._list_images()
        masks = self._list_masks()
        without_mask = sorted(set(images) - set(masks))
        without_image = sorted(set(masks) - set(images))
        self._report_orphans(without_mask, without_image, orphans)
        paired = [name for name in images if name in masks]
        if not paired:
            raise DataError(
                f"no image in {self.image_root} has a mask '{{name}}{mask_suffix}{mask_ext}' in {self.mask_root}"
            )
        self.names = split_names(paired, split, val_fraction, split_seed)
        if not self.names:
            raise ConfigError(
                f"split {split!r} of {len(paired)} mask pairs is empty (val_fraction={val_fraction})"
            )
        self._image_files = [images[name] for name in self.names]
        self._mask_files = [masks[name] for name in self.names]
        self._check_sizes()
        self._rng = WorkerSeededGenerator(seed, "NiqabMaskDataset")

    def _check_sizes(self) -> None:
        """Every mask has its image's size (read from the file headers: no decoding, milliseconds per
        hundred files). A mask of another size was drawn on another picture, or on a crop of this one:
        resized, it would mark the wrong pixels, so it is refused before training, naming the files."""
        wrong = []
        for image_file, mask_file in zip(self._image_files, self._mask_files):
            image_size = _header_size(self.image_root / image_file)
            mask_size = _header_size(self.mask_root / mask_file)
            if image_size != mask_size:
                wrong.append(
                    f"{mask_file} is {mask_size[0]}x{mask_size[1]}, {image_file} {image_size[0]}x{image_size[1]}"
                )
        if wrong:
            raise DataError(
                f"{self.mask_root}: {len(wrong)} masks differ in size from their image (first: {'; '.join(wrong[:3])}); "
                f"a mask must be drawn on its own image in {self.image_root} (images and masks of one size "
                "other than image_size are fine: both are resized)"
            )

    def _list_images(self) -> dict[str, str]:
        found: dict[str, str] = {}
        with os.scandir(self.image_root) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if entry.is_file() and ext.lower() in IMAGE_EXTENSIONS:
                    if stem in found:
                        raise DataError(
                            f"{self.image_root}: two images named {stem!r} ({found[stem]}, {entry.name})"
                        )
                    found[stem] = entry.name
        return found

    def _list_masks(self) -> dict[str, str]:
        ending = self.mask_suffix + self.mask_ext
        found: dict[str, str] = {}
        stray: list[str] = []
        with os.scandir(self.mask_root) as entries:
            for entry in entries:
                if not entry.is_file():
                    continue
                if entry.name.endswith(ending) and len(entry.name) > len(ending):
                    found[entry.name[: -len(ending)]] = entry.name
                else:
                    stray.append(entry.name)
        if stray:
            warnings.warn(
                f"{self.mask_root}: ignored {len(stray)} files not named '{{name}}{ending}': {sorted(stray)[:10]}",
                stacklevel=3,
            )
        return found

    def _report_orphans(self, without_mask: list[str], without_image: list[str], orphans: str) -> None:
        if not (without_mask or without_image):
            return
        message = (
            f"{self.root}: {len(without_mask)} images without a mask (first: {without_mask[:10]}) and "
            f"{len(without_image)} masks without an image (first: {without_image[:10]})"
        )
        if orphans == "error":
            raise DataError(message + "; remove them or pass orphans='warn' to skip them")
        warnings.warn(message + "; they are skipped", stacklevel=3)

    def __len__(self) -> int:
        return len(self.names)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = load_image_rgb(self.image_root / self._image_files[index])
        mask = load_mask(self.mask_root / self._mask_files[index])
        size = (self.image_size, self.image_size)
        if image.shape[:2] != size:
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        if mask.shape != size:
            mask = np.asarray(
                Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32)).resize(size, Image.BOX),
                dtype=np.float32,
            )
        return image, np.clip(mask, 0.0, 1.0)

    def _geometric(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Same flip and crop on image and mask, at pixel resolution."""
        rng = self._rng()
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        side = self.image_size
        crop = int(round(side * rng.uniform(*self.crop_scale)))
        if crop < side:
            top, left = (int(v) for v in rng.integers(0, side - crop + 1, size=2))
            box = (left, top, left + crop, top + crop)
            image = np.asarray(
                Image.fromarray(np.ascontiguousarray(image)).resize((side, side), Image.BILINEAR, box=box)
            )
            mask = np.asarray(
                Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32)).resize(
                    (side, side), Image.BILINEAR, box=box
                ),
                dtype=np.float32,
            )
        return np.ascontiguousarray(image), np.clip(mask, 0.0, 1.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self._load(index)
        if self.augment:
            image, mask = self._geometric(image, mask)
        target = area_downsample(mask, self.feature_size)
        return to_chw_tensor(image), torch.from_numpy(target)[None], index
