from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from oaml.data.synthetic.datasets import DEFAULT_OCCLUDERS, SyntheticFaces, SyntheticPairs
from oaml.data.synthetic.occluders import OCCLUDER_TYPES


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """The image downsampled to 16x16, centre 8x8 kept: a crude face descriptor without the background."""
    small = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BOX), np.float32)
    return small[4:12, 4:12].ravel()


def test_items_have_the_documented_types_and_shapes():
    data = SyntheticFaces(3, 2, seed=0, occluders={})
    assert len(data) == 6 and data.num_classes == 3
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    image, label, visibility = data[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert isinstance(label, int) and label == 1
    assert visibility.dtype == torch.float32 and visibility.shape == (1, 112, 112)
    assert (visibility == 1).all()  # clean data set
    assert image.float().std() > 20  # a picture, not a flat fill


def test_same_seed_gives_identical_images_and_different_seeds_differ():
    a = SyntheticFaces(2, 2, seed=5)
    b = SyntheticFaces(2, 2, seed=5)
    c = SyntheticFaces(2, 2, seed=6)
    for i in range(len(a)):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))
        assert not torch.equal(a[i][0], c[i][0])


def test_items_are_pure_functions_of_seed_identity_and_index():
    data = SyntheticFaces(4, 3, seed=1)
    forward = [data[i][0] for i in range(len(data))]
    backward = [data[i][0] for i in reversed(range(len(data)))][::-1]
    fresh = pickle.loads(pickle.dumps(data))  # what a DataLoader worker receives: no cache, same items
    assert len(fresh.renderer._cache) == 0
    for i, (x, y) in enumerate(zip(forward, backward)):
        assert torch.equal(x, y)
        assert torch.equal(fresh[i][0], x)
    assert torch.equal(data[-1][0], data[len(data) - 1][0])
    with pytest.raises(IndexError):
        data[len(data)]


def test_dataloader_workers_give_the_same_batches():
    data = SyntheticFaces(2, 2, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2)
    images, labels, masks = next(iter(loader))
    assert torch.equal(images, torch.stack([data[i][0] for i in range(4)]))
    assert labels.tolist() == [0, 0, 1, 1] and masks.shape == (4, 1, 112, 112)


@pytest.mark.parametrize("kind", OCCLUDER_TYPES)
def test_occluded_render_differs_from_clean_render_only_under_the_mask(kind):
    data = SyntheticFaces(2, 1, seed=0)
    clean, clean_mask = data.render(1, 4, None)
    occluded, mask = data.render(1, 4, kind)
    assert (clean_mask == 1).all()
    changed = (clean != occluded).any(axis=2)
    hidden = mask == 0
    assert not changed[~hidden].any()  # nothing outside the mask was touched
    assert changed[hidden].mean() > 0.95  # and the occluder covers its whole mask
    assert hidden.any()


def test_getitem_occluders_follow_the_default_mix():
    data = SyntheticFaces(200, 10, seed=0)
    kinds = [data.occluder_kind(i) for i in range(len(data))]
    occluded = sum(k is not None for k in kinds) / len(kinds)
    assert abs(occluded - sum(DEFAULT_OCCLUDERS.values())) < 0.04
    assert set(kinds) == set(OCCLUDER_TYPES) | {None}
    for i in range(12):  # the item's mask agrees with the type drawn for it
        _, _, visibility = data[i]
        assert (visibility == 0).any() == (kinds[i] is not None)


def test_identities_differ_more_between_than_within():
    data = SyntheticFaces(12, 4, seed=0, occluders={})
    features = np.stack([_thumbnail(data.render(k, n, None)[0]) for k in range(12) for n in range(4)])
    features = features.reshape(12, 4, -1)

    def rms(a, b):
        return float(np.sqrt(((a - b) ** 2).mean()))

    within = np.mean(
        [rms(features[k, i], features[k, j]) for k in range(12) for i in range(4) for j in range(i)]
    )
    between = np.mean([rms(features[k, 0], features[m, 0]) for k in range(12) for m in range(k)])
    assert between > 1.5 * within


def test_nuisance_changes_every_image_of_an_identity():
    data = SyntheticFaces(1, 3, seed=0, occluders={})
    images = [data.render(0, n, None)[0].astype(np.int16) for n in range(3)]
    for i in range(3):
        for j in range(i):
            assert np.abs(images[i] - images[j]).mean() > 5


def test_validation_identities_are_disjoint_and_independent_of_the_split():
    train = SyntheticFaces(10, 2, seed=0, occluders={})
    val = SyntheticFaces(3, 2, seed=0, first_identity=10, occluders={})
    bigger = SyntheticFaces(13, 2, seed=0, occluders={})
    for k in range(3):
        # identity 10 + k is the same person whichever set renders it ...
        np.testing.assert_array_equal(val.render(k, 0, None)[0], bigger.render(10 + k, 0, None)[0])
        # ... and none of the training people
        for t in range(10):
            assert not np.array_equal(val.render(k, 0, None)[0], train.render(t, 0, None)[0])
    assert val.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_other_image_sizes():
    data = SyntheticFaces(2, 1, seed=0, image_size=64, occluders={"sunglasses": 1.0})
    image, _, visibility = data[0]
    assert image.shape == (3, 64, 64) and visibility.shape == (1, 64, 64)
    assert (visibility == 0).any()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="num_identities"):
        SyntheticFaces(0, 2)
    with pytest.raises(ValueError, match="seed"):
        SyntheticFaces(2, 2, seed=-1)
    with pytest.raises(ValueError, match="unknown occluder type 'hat'"):
        SyntheticFaces(2, 2, occluders={"hat": 0.5})
    with pytest.raises(ValueError, match="identity must be < num_identities=2"):
        SyntheticFaces(2, 2).render(2, 0)
    with pytest.raises(ValueError, match="num_identities"):
        SyntheticPairs(4, 1)
    with pytest.raises(ValueError, match="at least one occluder type"):
        SyntheticPairs(4, 3, occluded=True, occluders={"niqab": 0.0})


def test_pairs_are_half_genuine_shuffled_and_held_out():
    pairs = SyntheticPairs(40, 15, seed=0)
    assert len(pairs) == 80 and pairs.issame.dtype == bool and pairs.issame.sum() == 20
    assert 0 < pairs.issame[:20].sum() < 20  # shuffled, not all genuine first
    ids = pairs.identities.reshape(-1, 2)
    assert ((ids[:, 0] == ids[:, 1]) == pairs.issame).all()
    assert ids.min() >= 100_000 and ids.max() < 100_015
    indices = pairs.image_indices.reshape(-1, 2)
    assert (indices[:, 0] != indices[:, 1]).all()  # a genuine pair is two different images
    image, visibility = pairs[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert visibility.dtype == torch.float32 and (visibility == 1).all()
    again = SyntheticPairs(40, 15, seed=0)
    assert (again.issame == pairs.issame).all() and (again.identities == pairs.identities).all()


def test_occluded_pairs_share_pairs_and_faces_with_clean_pairs():
    clean = SyntheticPairs(10, 6, seed=2)
    occluded = SyntheticPairs(10, 6, seed=2, occluded=True)
    assert (clean.issame == occluded.issame).all()
    assert (clean.identities == occluded.identities).all()
    assert (clean.image_indices == occluded.image_indices).all()
    kinds = np.array(occluded.kinds, dtype=object).reshape(-1, 2)
    assert ((kinds[:, 0] == None) ^ (kinds[:, 1] == None)).all()  # noqa: E711 -- one side of every pair
    assert {k for k in occluded.kinds if k is not None} == set(OCCLUDER_TYPES)
    for j in range(len(clean)):
        clean_image, _ = clean.render(j)
        image, mask = occluded.render(j)
        if occluded.kinds[j] is None:
            np.testing.assert_array_equal(image, clean_image)
            assert (mask == 1).all()
        else:
            assert (mask == 0).any()
            np.testing.assert_array_equal(image[mask == 1], clean_image[mask == 1])


def test_occluded_pairs_spread_types_in_proportion():
    pairs = SyntheticPairs(100, 10, seed=0, occluded=True, occluders={"niqab": 0.6, "medical_mask": 0.2})
    kinds = [k for k in pairs.kinds if k is not None]
    assert len(kinds) == 100
    assert kinds.count("niqab") == 75 and kinds.count("medical_mask") == 25
