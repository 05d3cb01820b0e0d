"""Synthetic occluded-face datasets: the project's built-in data when no face data is on disk.

``SyntheticFaces`` is a main-stream training set (identities x images, about half occluded, pixel-exact
visibility); ``SyntheticPairs`` holds verification pairs of held-out identities, clean or occluded-clean.
Faces come from :class:`oaml.data.synthetic.face_renderer.FaceRenderer`.

Everything is a pure function of integers: datasets are random-access and safe to use from any number of
DataLoader workers, and the same item is the same image in every process.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.data.synthetic.face_renderer import (
    OCCLUDER_STREAM,
    PAIR_LIST_STREAM,
    PAIR_OCCLUSION_STREAM,
    RANDOM_OCCLUDER,
    FaceRenderer,
    check_nonnegative_int,
)
from oaml.data.synthetic.face_template import TEMPLATE_SIZE
from oaml.data.synthetic.occluders import OCCLUDER_TYPES, RandomOccluder, validate_occluder_probabilities

DEFAULT_OCCLUDERS: dict[str, float] = {
    "niqab": 0.15,
    "medical_mask": 0.12,
    "sunglasses": 0.1,
    "blocks": 0.07,
    "blobs": 0.06,
}
"""Default per-image occluder chances of :class:`SyntheticFaces`: half of the images are occluded."""


def _to_tensors(image: np.ndarray, visibility: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(visibility)[
        None
    ]


# ---------------------------------------------------------------------------------------------- datasets


class SyntheticFaces(Dataset):
    """``num_identities`` synthetic identities with ``images_per_identity`` images each.

    Item ``i`` is image ``i % images_per_identity`` of local identity ``i // images_per_identity``, i.e. of
    global identity ``first_identity + i // images_per_identity``. A global identity's appearance depends only
    on ``(seed, global identity)``, so a validation set with ``first_identity`` past the training range holds
    different, unseen people.

    Args:
        occluders: per-image chances ``{type: p}`` (sum <= 1, the rest clean); None for
            :data:`DEFAULT_OCCLUDERS` (about half occluded), ``{}`` for clean images only.
        cache_size: identities whose canonical drawing is kept in memory (about 50 KB each at 112 px).

    Items: ``(image uint8 [3, H, W] RGB, label int, visibility float32 [1, H, W] in {0, 1})``.
    """

    # The visibility is pixel-exact (drawn with the occluder): it supervises the OcclusionHead.
    provides_visibility = True

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        seed: int = 0,
        first_identity: int = 0,
        occluders: Mapping[str, float] | None = None,
        image_size: int = TEMPLATE_SIZE,
        cache_size: int = 1024,
    ) -> None:
        self.num_identities = check_nonnegative_int("num_identities", num_identities, minimum=1)
        self.images_per_identity = check_nonnegative_int(
            "images_per_identity", images_per_identity, minimum=1
        )
        self.first_identity = check_nonnegative_int("first_identity", first_identity)
        self.renderer = FaceRenderer(seed, image_size, cache_size)
        probabilities = DEFAULT_OCCLUDERS if occluders is None else occluders
        self.occluder = RandomOccluder(probabilities)
        self.labels = np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)
        self.num_classes = self.num_identities

    @property
    def seed(self) -> int:
        return self.renderer.seed

    @property
    def image_size(self) -> int:
        return self.renderer.image_size

    def __len__(self) -> int:
        return len(self.labels)

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic images")
        index %= len(self)
        return divmod(index, self.images_per_identity)

    def render(
        self, identity: int, image_index: int, occluder: str | None = RANDOM_OCCLUDER
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render image ``image_index`` of local identity ``identity`` (label, 0..num_identities-1).

        ``occluder``: ``"random"`` (this dataset's mix, as ``__getitem__`` does), None (clean) or a type.
        Returns (uint8 [H, W, 3] RGB, float32 [H, W] visibility). ``image_index`` may exceed
        ``images_per_identity`` to get more images of the same person.
        """
        identity = check_nonnegative_int("identity", identity)
        if identity >= self.num_identities:
            raise ValueError(f"identity must be < num_identities={self.num_identities}, got {identity}")
        image, visibility, _ = self.renderer.render(
            self.first_identity + identity, image_index, occluder, self.occluder
        )
        return image, visibility

    def occluder_kind(self, index: int) -> str | None:
        """The occluder type drawn for item ``index`` (None: clean), without rendering it."""
        identity, image_index = self._locate(index)
        rng = np.random.default_rng(
            [self.renderer.seed, OCCLUDER_STREAM, self.first_identity + identity, image_index]
        )
        return self.occluder.choose(rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        identity, image_index = self._locate(index)
        image, visibility = self.render(identity, image_index, RANDOM_OCCLUDER)
        image_t, visibility_t = _to_tensors(image, visibility)
        return image_t, identity, visibility_t


def _allocate_kinds(weights: Mapping[str, float], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` occluder types in proportion to ``weights`` (largest remainder, each used type at least once
    when count allows), in a random order."""
    kinds = [k for k, w in weights.items() if w > 0]
    if not kinds:
        raise ValueError(
            f"occluded pairs need at least one occluder type with weight > 0, got {dict(weights)}"
        )
    w = np.array([weights[k] for k in kinds], np.float64)
    exact = w / w.sum() * count
    counts = np.floor(exact).astype(int)
    if count >= len(kinds):
        counts = np.maximum(counts, 1)
    while counts.sum() > count:
        counts[np.argmax(counts - exact)] -= 1
    order = np.argsort(-(exact - counts), kind="stable")
    for i in range(count - counts.sum()):
        counts[order[i % len(kinds)]] += 1
    allocated = np.repeat(np.arange(len(kinds)), counts)
    return [kinds[i] for i in rng.permutation(allocated)]


class SyntheticPairs(Dataset):
    """Verification pairs of held-out synthetic identities: items ``2i`` and ``2i + 1`` form pair ``i``.

    Half of the pairs are genuine (two images of one identity), the rest impostors (two identities), in a
    deterministic shuffled order; ``issame[i]`` says which. The pair list depends only on
    ``(seed, num_pairs, num_identities, first_identity)``.

    With ``occluded=True`` one image of every pair (a deterministic choice per pair) wears an occluder and the
    other is clean -- the occluded-clean protocol. Occluder types are spread over the pairs in proportion to
    ``occluders`` (default: every type equally), so every type appears. The occluded set has the same pairs
    and the same underlying faces as the clean one; only the occluder pixels differ.

    Items: ``(image uint8 [3, H, W] RGB, visibility float32 [1, H, W])``.
    """

    def __init__(
        self,
        num_pairs: int,
        num_identities: int,
        seed: int = 0,
        first_identity: int = 100_000,
        occluded: bool = False,
        occluders: Mapping[str, float] | None = None,
        image_size: int = TEMPLATE_SIZE,
        cache_size: int = 1024,
    ) -> None:
        self.num_pairs = check_nonnegative_int("num_pairs", num_pairs, minimum=1)
        self.num_identities = check_nonnegative_int("num_identities", num_identities, minimum=2)
        self.first_identity = check_nonnegative_int("first_identity", first_identity)
        self.occluded = bool(occluded)
        self.renderer = FaceRenderer(seed, image_size, cache_size)

        rng = np.random.default_rng(
            [self.renderer.seed, PAIR_LIST_STREAM, first_identity, num_identities, num_pairs]
        )
        n_genuine = num_pairs // 2
        issame = np.arange(num_pairs) < n_genuine
        first = rng.integers(0, num_identities, size=num_pairs)
        other = (first + rng.integers(1, num_identities, size=num_pairs)) % num_identities
        second = np.where(issame, first, other)
        index_a = rng.integers(0, 2**31 - 1, size=num_pairs)
        index_b = (index_a + rng.integers(1, 2**31 - 1, size=num_pairs)) % (2**31 - 1)
        order = rng.permutation(num_pairs)
        self.issame = issame[order]
        self.identities = np.stack([first[order], second[order]], 1).ravel() + first_identity  # global ids
        self.image_indices = np.stack([index_a[order], index_b[order]], 1).ravel()

        self.kinds: list[str | None] = [None] * (2 * num_pairs)
        if self.occluded:
            weights = validate_occluder_probabilities(
                {k: 1.0 / len(OCCLUDER_TYPES) for k in OCCLUDER_TYPES} if occluders is None else occluders
            )
            occ_rng = np.random.default_rng(
                [self.renderer.seed, PAIR_OCCLUSION_STREAM, first_identity, num_identities, num_pairs]
            )
            sides = occ_rng.integers(0, 2, size=num_pairs)
            for pair, kind in enumerate(_allocate_kinds(weights, num_pairs, occ_rng)):
                self.kinds[2 * pair + int(sides[pair])] = kind

    def __len__(self) -> int:
        return 2 * self.num_pairs

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as numpy: (uint8 [H, W, 3] RGB, float32 [H, W] visibility)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pair images")
        index %= len(self)
        image, visibility, _ = self.renderer.render(
            int(self.identities[index]), int(self.image_indices[index]), self.kinds[index]
        )
        return image, visibility

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_tensors(*self.render(index))
