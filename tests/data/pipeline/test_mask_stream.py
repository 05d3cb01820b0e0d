from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from oaml.data.pipeline.augment import Chain, OccluderAugment
from oaml.data.pipeline.mask_stream import MaskStream, provides_visibility


class _Masks(Dataset):
    feature_size = (7, 7)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.full((3, 112, 112), i, dtype=torch.uint8), torch.zeros(1, 7, 7), i


class _Clean(Dataset):
    transform = None

    def __len__(self) -> int:
        return 50

    def __getitem__(self, i: int):
        visibility = torch.ones(1, 112, 112)
        visibility[:, 56:] = 0.0  # lower half hidden: the stream must carry this target, downsampled
        return torch.full((3, 112, 112), 100 + i, dtype=torch.uint8), i % 5, visibility


def test_mix_holds_the_clean_fraction_and_downsampled_targets() -> None:
    stream = MaskStream(_Masks(), _Clean(), clean_fraction=0.2, seed=0)
    assert len(stream) == 10  # 8 masked + ceil(8 * 0.2 / 0.8) = 2 clean
    image, visibility = stream[9]
    assert int(image[0, 0, 0]) >= 100 and visibility.shape == (1, 7, 7)
    assert torch.allclose(visibility[0, :3], torch.ones(3, 7)) and torch.all(visibility[0, 4:] == 0)
    assert visibility[0, 3].mean().item() == pytest.approx(0.5)  # row 3 covers pixels 48..63, half hidden


def test_same_seed_same_clean_faces_and_bad_fraction() -> None:
    a, b = MaskStream(_Masks(), _Clean(), seed=3), MaskStream(_Masks(), _Clean(), seed=3)
    assert list(a.clean_indices) == list(b.clean_indices)
    with pytest.raises(ValueError, match="mask_clean_fraction"):
        MaskStream(_Masks(), _Clean(), clean_fraction=1.0)


def test_provides_visibility_sees_occluder_augmentation() -> None:
    clean = _Clean()
    assert not provides_visibility(clean)
    clean.transform = Chain([OccluderAugment({"niqab": 0.5})])
    assert provides_visibility(clean)
