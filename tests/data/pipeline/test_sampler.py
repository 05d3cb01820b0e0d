"""IdentityBalancedBatchSampler: P identities x K images, seeded epochs, disjoint ranks, clear errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from oaml.data.pipeline.sampler import IdentityBalancedBatchSampler


def make_labels(num_ids: int = 23, seed: int = 0) -> np.ndarray:
    """Identities with 1..9 images each (some fewer than K), interleaved and with non-contiguous label values."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 10, size=num_ids)
    labels = np.repeat(np.arange(num_ids) * 7 + 100, counts)
    return labels[rng.permutation(len(labels))]


def test_batches_hold_p_distinct_identities_with_k_images_each() -> None:
    labels = make_labels()
    sampler = IdentityBalancedBatchSampler(labels, batch_size=12, num_instances=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 23 // 3
    seen: list[int] = []
    for batch in batches:
        assert len(batch) == 12
        per_id = Counter(labels[batch].tolist())
        assert len(per_id) == 3 and set(per_id.values()) == {4}
        for identity in per_id:
            images = [i for i in batch if labels[i] == identity]
            available = int((labels == identity).sum())
            # Without replacement when the identity has enough images; duplicates only when it has too few.
            assert len(set(images)) == min(4, available)
        seen.extend(per_id)
    assert len(seen) == len(set(seen))  # each identity at most once per epoch


def test_same_seed_and_epoch_repeat_and_epochs_differ() -> None:
    labels = make_labels()
    a = IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=2, seed=5)
    b = IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=2, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again gives the same epoch
    b.set_epoch(3)
    assert list(a) != list(b)
    other_seed = IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=2, seed=6)
    other_seed.set_epoch(2)
    assert list(a) != list(other_seed)


def test_two_ranks_get_disjoint_identities_and_equal_lengths() -> None:
    labels = make_labels(num_ids=25)
    ranks = [
        IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=4, seed=1, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for epoch in (0, 1):
        ids = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler) == (25 // 2) // 2
            ids.append({int(labels[i]) for batch in batches for i in batch})
        assert ids[0] and ids[1] and not ids[0] & ids[1]
        assert len(ids[0]) == len(ids[1]) == 12  # 6 batches x 2 identities


def test_works_as_dataloader_batch_sampler() -> None:
    labels = make_labels()
    dataset = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    sampler = IdentityBalancedBatchSampler(labels.tolist(), batch_size=6, num_instances=3)
    loader = DataLoader(dataset, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler)
    indices, batch_labels = batches[0]
    assert torch.equal(batch_labels, torch.as_tensor(labels)[indices])
    assert len(torch.unique(batch_labels)) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # The example: 30 is no multiple of 4; the message names both keys and a batch size that works.
        (
            {"batch_size": 30, "num_instances": 4},
            r"data.batch_size=30 is not a multiple of data.num_instances=4.*=28",
        ),
        ({"batch_size": 8, "num_instances": 1}, "data.num_instances"),
        ({"batch_size": 4, "num_instances": 4}, "1 identity per batch"),
        # make_labels() has 23 identities: a batch of 50 needs more.
        (
            {"batch_size": 200, "num_instances": 4},
            r"23 identities, 23 for each of 1 process.*fewer than the 50",
        ),
        ({"batch_size": 40, "num_instances": 4, "num_replicas": 3, "rank": 0}, "7 for each of 3 process"),
        ({"batch_size": 8, "num_instances": 4, "num_replicas": 2, "rank": 2}, "rank"),
    ],
)
def test_bad_settings_name_the_config_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdentityBalancedBatchSampler(make_labels(), **kwargs)


def test_too_few_identities_with_k_images_for_a_batch() -> None:
    # 6 identities, only 2 of them with 4 images: a batch of 3 identities x 4 would be mostly repeats.
    labels = np.repeat(np.arange(6), [4, 4, 2, 2, 1, 1])
    with pytest.raises(
        ValueError, match=r"only 2 of the 6 identities .* have data.num_instances=4 images, fewer than the 3"
    ):
        IdentityBalancedBatchSampler(labels, batch_size=12, num_instances=4)
    assert len(IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=4)) == 3


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        IdentityBalancedBatchSampler([3, 3, 3, 3], batch_size=4, num_instances=2)
    with pytest.raises(ValueError, match="labels"):
        IdentityBalancedBatchSampler(np.zeros((4, 2), dtype=int), batch_size=4, num_instances=2)
    with pytest.raises(ValueError, match="labels"):
        IdentityBalancedBatchSampler([0.5, 1.5], batch_size=4, num_instances=2)


def test_image_sized_epochs_cover_as_many_images_as_the_set_holds() -> None:
    # 10 identities x 30 images: an identity epoch has 10 // 2 = 5 batches of 2 x 4 images (40 images);
    # an image epoch has 300 // 8 = 37 batches, made of successive identity passes.
    labels = np.repeat(np.arange(10), 30)
    by_identity = IdentityBalancedBatchSampler(labels, batch_size=8, num_instances=4, seed=1)
    by_images = IdentityBalancedBatchSampler(
        labels, batch_size=8, num_instances=4, seed=1, epoch_size="images"
    )
    assert len(by_identity) == 5 and len(by_images) == 37
    batches = list(by_images)
    assert len(batches) == 37
    # The first pass is the identity epoch itself; every pass visits each identity once.
    assert batches[:5] == list(by_identity)
    for start in range(0, 35, 5):
        ids = [labels[i] for batch in batches[start : start + 5] for i in batch[::4]]
        assert sorted(ids) == list(range(10))
    assert batches[5:10] != batches[:5]


def test_image_sized_epochs_stay_disjoint_and_equal_across_ranks() -> None:
    labels = np.repeat(np.arange(12), 20)
    ranks = [
        IdentityBalancedBatchSampler(labels, 8, 4, seed=0, num_replicas=2, rank=r, epoch_size="images")
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 240 // 16
    first, second = (list(s) for s in ranks)
    for a, b in zip(first, second):
        assert not {labels[i] for i in a} & {labels[i] for i in b}


def test_unknown_epoch_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="data.epoch_size"):
        IdentityBalancedBatchSampler(np.repeat(np.arange(4), 4), 8, 4, epoch_size="steps")


def test_lightning_reaches_set_epoch_through_the_loader() -> None:
    # Lightning's loops call set_epoch on `loader.sampler` and `loader.batch_sampler.sampler` only.
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = IdentityBalancedBatchSampler(np.repeat(np.arange(8), 4), batch_size=8, num_instances=4)
    loader = DataLoader(TensorDataset(torch.arange(32)), batch_sampler=sampler)
    epoch0 = list(sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3 and list(sampler) != epoch0


def test_identity_weighting_draws_identities_in_proportion_to_their_images() -> None:
    # A long tail like LFW's: 30 identities with 2 images, 3 with 40. Dealt uniformly, a large identity is drawn
    # as often as a small one (each of its images a twentieth as often); weighted by images, its images are
    # drawn about as often as the small ones'.
    labels = np.repeat(np.arange(33), [2] * 30 + [40] * 3)
    draws: dict[float, Counter] = {}
    for weighting in (0.0, 1.0):
        sampler = IdentityBalancedBatchSampler(
            labels, 8, 2, seed=0, epoch_size="images", identity_weighting=weighting
        )
        counts: Counter = Counter()
        for epoch in range(20):
            sampler.set_epoch(epoch)
            for batch in sampler:
                per_id = Counter(labels[batch].tolist())
                assert len(per_id) == 4 and set(per_id.values()) == {2}  # P distinct identities x K
                counts.update(per_id.keys())
        draws[weighting] = counts
    large = lambda c: np.mean([c[i] for i in (30, 31, 32)])  # noqa: E731
    small = lambda c: np.mean([c[i] for i in range(30)])  # noqa: E731
    assert 0.8 < large(draws[0.0]) / small(draws[0.0]) < 1.25
    # Image share 40:2 = 20; sampling P=4 without replacement caps the largest a little below it.
    assert 8 < large(draws[1.0]) / small(draws[1.0]) < 21


def test_identity_weighting_is_seeded_and_checked() -> None:
    labels = make_labels()
    a, b = (IdentityBalancedBatchSampler(labels, 8, 2, seed=4, identity_weighting=0.5) for _ in range(2))
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    # weighting 0 is today's dealing, batch for batch
    dealt = IdentityBalancedBatchSampler(labels, 8, 2, seed=4)
    assert list(IdentityBalancedBatchSampler(labels, 8, 2, seed=4, identity_weighting=0)) == list(dealt)
    for bad in (-1.0, float("nan"), float("inf"), "images", True):
        with pytest.raises(ValueError, match="data.identity_weighting"):
            IdentityBalancedBatchSampler(labels, 8, 2, identity_weighting=bad)
