"""The occluded verification protocol: the same pairs, with one image of each pair occluded.

Any verification set (a ``.bin``, a pair list) becomes its occluded twin: for pair i, one of its two images
(chosen per pair) gets an occluder whose type cycles through ``kinds`` with the pair index, so every type
is represented equally and in every fold. Everything is a pure function of (seed, pair index): the
occluded set is identical on every run, every rank and every machine, and comparable with the clean set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.data.synthetic.occluders import OCCLUDER_TYPES, apply_occluder
from oaml.errors import ConfigError


class OccludedPairs(Dataset):
    """Wrap a verification set (items ``(image uint8 [3,H,W], visibility [1,H,W])``, attribute ``issame``)."""

    def __init__(
        self,
        pairs: Dataset,
        kinds: Sequence[str] = OCCLUDER_TYPES,
        seed: int = 0,
        match_grayscale: bool = False,
    ) -> None:
        unknown = sorted(set(kinds) - set(OCCLUDER_TYPES))
        if unknown or not kinds:
            raise ConfigError(f"occluder kinds {unknown or list(kinds)} are not in {OCCLUDER_TYPES}")
        self.pairs = pairs
        self.kinds = tuple(kinds)
        self.seed = seed
        # grey occluders on grey faces (apply_occluder): the same shapes and places either way
        self.match_grayscale = bool(match_grayscale)
        self.issame = np.asarray(pairs.issame, dtype=bool)
        self.name = f"{getattr(pairs, 'name', 'pairs')}_occluded"

    def __len__(self) -> int:
        return len(self.pairs)

    def occlusion_of(self, pair: int) -> tuple[int, str]:
        """(which image of the pair is occluded: 0 or 1, occluder type) for pair ``pair``."""
        side = int(np.random.default_rng([self.seed, pair, 1]).integers(2))
        return side, self.kinds[pair % len(self.kinds)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, visibility = self.pairs[index][:2]
        pair, side = divmod(index, 2)
        occluded_side, kind = self.occlusion_of(pair)
        if side != occluded_side:
            return image, visibility
        rng = np.random.default_rng([self.seed, pair, 2])
        occluded, mask = apply_occluder(
            image.permute(1, 2, 0).numpy(), kind, rng, match_grayscale=self.match_grayscale
        )
        return (
            torch.from_numpy(np.ascontiguousarray(occluded)).permute(2, 0, 1),
            visibility * torch.from_numpy(mask)[None],
        )
