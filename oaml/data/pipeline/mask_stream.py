"""The occlusion stream: faces with ground-truth visibility, mixed with main-stream faces.

A mask set (e.g. the niqab set) only shows occluded faces. Trained on it alone, the OcclusionHead could
learn "everything is a little hidden" and still score well; mixing in main-stream faces with their own
target (all-visible for a clean face) teaches it to say "visible" when nothing covers the face. The
main-stream faces come as the main stream delivers them (with its augmentation, and then with the exact
mask of any occluder it pasted). ``clean_fraction`` of the items are such faces, chosen once per run from
the seed; the loader reshuffles the whole stream every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.errors import ConfigError, DataError
from oaml.losses.occlusion import downsample_visibility


class MaskStream(Dataset):
    """Items ``(image uint8 [3,H,W], visibility float32 [1,h,w])`` from a mask set and from clean faces.

    Args:
        masks: mask dataset with items ``(image, visibility [1,h,w], index)`` and a ``feature_size`` (h, w).
        clean: main-stream dataset with items ``(image, label, visibility [1,H,W])``.
        clean_fraction: share of clean faces in the stream (0.2: 80% masked, 20% clean).
        seed: picks which clean faces join the stream.
    """

    def __init__(self, masks: Dataset, clean: Dataset, clean_fraction: float = 0.2, seed: int = 0) -> None:
        if not 0.0 <= clean_fraction < 1.0:
            raise ConfigError(f"data.mask_clean_fraction must be in [0, 1), got {clean_fraction}")
        if len(masks) == 0:
            raise DataError("the mask set (data.masks) is empty")
        self.masks = masks
        self.clean = clean
        self.feature_size = tuple(getattr(masks, "feature_size", (7, 7)))
        num_clean = math.ceil(len(masks) * clean_fraction / (1.0 - clean_fraction))
        rng = np.random.default_rng([seed, 0x6D61736B])
        self.clean_indices = rng.choice(len(clean), size=num_clean, replace=num_clean > len(clean))

    def __len__(self) -> int:
        return len(self.masks) + len(self.clean_indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < len(self.masks):
            image, visibility = self.masks[index][:2]
            return image, visibility
        image, _, visibility = self.clean[int(self.clean_indices[index - len(self.masks)])][:3]
        return image, downsample_visibility(visibility[None], self.feature_size)[0]


def provides_visibility(dataset: Dataset) -> bool:
    """Whether a main-stream dataset's visibility is information, not a constant all-visible placeholder.

    True for datasets that say so (``provides_visibility = True``, e.g. the synthetic faces) and for any
    dataset whose transform pastes occluders (it then knows exactly what it hid).
    """
    if getattr(dataset, "provides_visibility", False):
        return True
    return any(
        getattr(t, "provides_visibility", False) for t in _transforms(getattr(dataset, "transform", None))
    )


def _transforms(transform: object) -> Iterable[object]:
    if transform is None:
        return []
    members = getattr(transform, "augmentations", None)
    if members is None:
        return [transform]
    return [leaf for member in members for leaf in _transforms(member)]
