"""Verification sets in loaders: whole pairs per batch, whole pairs per rank.

A verification set stores pair i as images 2i and 2i+1. Validation scores pairs inside each batch, on the
rank that holds them, so that only per-pair scores cross process boundaries (the predecessor gathered
feature maps of every image on every GPU and ran out of memory). That needs two guarantees, given here:
a batch never splits a pair, and a rank never holds half a pair.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class IndexedPairs(Dataset):
    """Wrap a verification dataset so that each image also carries its pair index and the pair's label."""

    def __init__(self, pairs: Dataset, name: str) -> None:
        issame = getattr(pairs, "issame", None)
        if issame is None:
            raise TypeError(f"verification set '{name}' ({type(pairs).__name__}) has no `issame` attribute")
        self.pairs = pairs
        self.name = name
        self.issame = np.asarray(issame, dtype=bool)
        if len(pairs) != 2 * len(self.issame):
            raise ValueError(
                f"verification set '{name}' has {len(pairs)} images for {len(self.issame)} pairs; "
                "pair i must be images 2i and 2i+1"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        image, visibility = self.pairs[index][:2]
        pair = index // 2
        return image, visibility, pair, bool(self.issame[pair])


class PairShardSampler(Sampler[int]):
    """Image indices of a contiguous block of pairs for one rank, pairs kept whole, in order.

    Ranks get blocks that differ by at most one pair; nothing is padded or repeated, so gathered scores
    need no de-duplication beyond the pair index itself (which the gatherer still checks).
    """

    def __init__(self, num_pairs: int, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        bounds = np.linspace(0, num_pairs, num_replicas + 1).round().astype(int)
        self.first_pair, self.end_pair = int(bounds[rank]), int(bounds[rank + 1])

    def __len__(self) -> int:
        return 2 * (self.end_pair - self.first_pair)

    def __iter__(self) -> Iterator[int]:
        return iter(range(2 * self.first_pair, 2 * self.end_pair))
