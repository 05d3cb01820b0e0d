"""Keyed training items: a resumed epoch yields exactly the batches left, and an item's augmentation is a pure
function of its key (the same in any process, a new one in another epoch or pass)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from oaml.data.pipeline.augment import AdaFaceAugment, OccluderAugment
from oaml.data.pipeline.item_keys import KeyedBatches, KeyedItems
from oaml.data.pipeline.sampler import IdentityBalancedBatchSampler


def _identity_batches() -> KeyedBatches:
    labels = np.repeat(np.arange(16), 4)
    return KeyedBatches(IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=4, seed=5), stream=0)


def test_resume_within_epoch_yields_exactly_the_batches_left() -> None:
    keyed = _identity_batches()
    keyed.sampler.set_epoch(2)
    whole = list(keyed)
    assert len(whole) == 8
    assert whole[3][1] == (whole[3][1][0], (0, 2, 0, 3, 1))  # (stream, epoch, pass, batch, slot)
    # Lightning makes the resumed iterator before its set_epoch: the resume sets the epoch itself.
    keyed.sampler.set_epoch(0)
    keyed.resume_within_epoch(epoch=2, batches_done=3)
    assert keyed.sampler.epoch == 2
    assert list(keyed) == whole[3:]
    assert len(list(keyed)) == 8  # the skip is used once
    with pytest.raises(ValueError, match="batches_done"):
        keyed.resume_within_epoch(epoch=0, batches_done=-1)


def test_a_cycled_loader_counts_passes_and_resumes_inside_its_second_pass() -> None:
    dataset = TensorDataset(torch.arange(10))
    make = lambda: KeyedBatches(  # noqa: E731
        BatchSampler(DistributedSampler(dataset, num_replicas=1, rank=0, seed=1), 4, drop_last=True), 1
    )
    cycled = make()
    cycled.sampler.set_epoch(4)
    first, second = list(cycled), list(cycled)  # 2 batches a pass
    indices = lambda batches: [[i for i, _ in b] for b in batches]  # noqa: E731
    assert indices(first) == indices(second)  # the same faces (one order per epoch) ...
    assert {e[2] for batch in second for _, e in batch} == {1}  # ... in pass 1: new augmentation
    resumed = make()
    resumed.resume_within_epoch(epoch=4, batches_done=3)  # 2 batches of pass 0, 1 of pass 1
    assert list(resumed) == second[1:]
    third = list(resumed)  # the next pass of this epoch is pass 2, of the same faces
    assert indices(third) == indices(first)
    assert {e[2] for batch in third for _, e in batch} == {2}


def test_augmentation_is_a_function_of_the_item_key_in_any_worker() -> None:
    image = torch.full((3, 112, 112), 128, dtype=torch.uint8)
    visibility = torch.ones((1, 112, 112))

    class Augmented(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.occlude = OccluderAugment({"blocks": 0.5, "sunglasses": 0.5}, seed=3)
            self.augment = AdaFaceAugment(crop_prob=0.5, photometric_prob=0.5, seed=3)

        def __len__(self) -> int:
            return 64

        def __getitem__(self, index: int) -> torch.Tensor:
            return self.augment(*self.occlude(image, visibility))[0]

    keyed = _identity_batches()
    keyed.sampler.set_epoch(1)
    batches = list(keyed)[:2]

    def fetch(num_workers: int, order: list) -> list[torch.Tensor]:
        loader = DataLoader(KeyedItems(Augmented()), batch_sampler=order, num_workers=num_workers)
        return [b for b in loader]

    in_process = fetch(0, batches)
    in_workers = fetch(2, batches)
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers))
    # Fetched alone (as after a resume) the second batch is what it was after the first.
    assert torch.equal(fetch(2, batches[1:])[0], in_process[1])
    # Items differ from each other (the key, not the image, seeds the draw).
    assert not all(torch.equal(in_process[0][0], in_process[0][i]) for i in range(1, 8))
