from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from oaml.data.pipeline.occluded_pairs import OccludedPairs
from oaml.data.synthetic.datasets import SyntheticPairs
from oaml.data.synthetic.occluders import OCCLUDER_TYPES, is_grayscale


@pytest.fixture(scope="module")
def clean() -> Dataset:
    return SyntheticPairs(num_pairs=20, num_identities=8, seed=5)


def test_exactly_one_image_per_pair_is_occluded_and_masked(clean) -> None:
    occluded = OccludedPairs(clean, seed=1)
    kinds = []
    for pair in range(len(clean.issame)):
        side, kind = occluded.occlusion_of(pair)
        kinds.append(kind)
        for s in (0, 1):
            image, visibility = occluded[2 * pair + s]
            base_image, base_visibility = clean[2 * pair + s]
            if s == side:
                hidden = visibility[0] == 0
                assert hidden.any(), (pair, kind)
                # Pixels change only where the visibility says hidden.
                changed = (image != base_image).any(dim=0)
                assert not (changed & ~hidden).any()
            else:
                assert torch.equal(image, base_image) and torch.equal(visibility, base_visibility)
    assert set(kinds) == set(OCCLUDER_TYPES)  # every type appears
    np.testing.assert_array_equal(occluded.issame, clean.issame)


def test_deterministic_per_seed(clean) -> None:
    a, b, c = OccludedPairs(clean, seed=1), OccludedPairs(clean, seed=1), OccludedPairs(clean, seed=2)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(8))
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(8))


def test_unknown_kind_is_rejected(clean) -> None:
    with pytest.raises(ValueError, match="scarf"):
        OccludedPairs(clean, kinds=["scarf"])


class _GreyPairs(Dataset):
    """The synthetic pairs in grey, as a grayscale LFW copy stores them."""

    def __init__(self, pairs: Dataset) -> None:
        self.pairs, self.issame, self.name = pairs, pairs.issame, "grey"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image, visibility = self.pairs[index][:2]
        return image[:1].expand(3, -1, -1).clone(), visibility


def test_match_grayscale_keeps_the_protocol_and_greys_the_occluder(clean) -> None:
    grey = _GreyPairs(clean)
    coloured, matched = OccludedPairs(grey, seed=1), OccludedPairs(grey, seed=1, match_grayscale=True)
    any_colour = False
    for index in range(len(grey)):
        (a, vis_a), (b, vis_b) = coloured[index], matched[index]
        assert torch.equal(vis_a, vis_b)  # the same occluders in the same places
        assert is_grayscale(b.permute(1, 2, 0).numpy())
        any_colour |= not is_grayscale(a.permute(1, 2, 0).numpy())
    assert any_colour  # without the option the occluders stay coloured on the grey faces
