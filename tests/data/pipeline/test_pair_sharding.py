from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from oaml.data.pipeline.pair_sharding import BlockShardSampler, IndexedFaces, IndexedPairs, PairShardSampler


class _Pairs(Dataset):
    def __init__(self, num_pairs: int, num_images: int | None = None) -> None:
        self.issame = np.arange(num_pairs) % 3 == 0
        self.num_images = 2 * num_pairs if num_images is None else num_images

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((3, 2, 2), index, dtype=torch.uint8), torch.ones(1, 2, 2)


@pytest.mark.parametrize("num_pairs,world", [(7, 2), (10, 3), (1, 1), (5, 4)])
def test_shards_cover_every_pair_once_and_keep_pairs_whole(num_pairs: int, world: int) -> None:
    shards = [list(PairShardSampler(num_pairs, world, rank)) for rank in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(2 * num_pairs))
    for shard in shards:
        assert len(shard) % 2 == 0
        assert all(shard[k] // 2 == shard[k + 1] // 2 for k in range(0, len(shard), 2))
    sizes = [len(s) // 2 for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_bad_rank_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        PairShardSampler(4, num_replicas=2, rank=2)


def test_indexed_pairs_carries_pair_index_and_label() -> None:
    ds = IndexedPairs(_Pairs(6), "toy")
    image, visibility, pair, same = ds[7]
    assert int(image[0, 0, 0]) == 7 and pair == 3 and same is True
    assert visibility.shape == (1, 2, 2)


def test_indexed_pairs_rejects_odd_sets() -> None:
    ds = _Pairs(4, num_images=7)
    with pytest.raises(ValueError, match="pair i must be images 2i and 2i\\+1"):
        IndexedPairs(ds, "broken")


@pytest.mark.parametrize("num_items,world", [(15, 2), (7, 3), (1, 1), (3, 4)])
def test_single_face_shards_cover_every_face_once_in_contiguous_blocks(num_items: int, world: int) -> None:
    shards = [list(BlockShardSampler(num_items, 1, world, rank)) for rank in range(world)]
    assert [i for shard in shards for i in shard] == list(range(num_items))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_indexed_faces_carry_their_own_index() -> None:
    ds = IndexedFaces(_Pairs(3), "masks")
    image, visibility, index = ds[5]
    assert int(image[0, 0, 0]) == 5 and index == 5 and visibility.shape == (1, 2, 2)
    with pytest.raises(ValueError, match="'empty' is empty"):
        IndexedFaces(_Pairs(0), "empty")


def test_a_val_set_smaller_than_the_world_is_refused_before_validation() -> None:
    from types import SimpleNamespace

    from oaml.data.pipeline.datamodule import OAMLDataModule

    datamodule = OAMLDataModule(mask_val_sets={"niqab": _Pairs(0, num_images=1)}, num_workers=0)
    assert len(datamodule.val_dataloader()) == 1  # one process: fine
    datamodule.trainer = SimpleNamespace(world_size=2, global_rank=0)  # the two attributes it reads
    with pytest.raises(ValueError, match="'niqab' has 1 faces, fewer than the 2 processes"):
        datamodule.val_dataloader()
