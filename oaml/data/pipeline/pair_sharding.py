"""Validation sets in loaders: whole pairs per batch, whole pairs per rank; single faces for mask sets.

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


class IndexedFaces(Dataset):
    """Wrap a mask set (items ``(image, visibility, ...)``) so that each face carries its own index: the
    OcclusionHead's quality on held-out faces with true masks is scored per face, then gathered by index."""

    def __init__(self, faces: Dataset, name: str) -> None:
        if len(faces) == 0:
            raise ValueError(f"mask validation set '{name}' is empty")
        self.faces = faces
        self.name = name

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, visibility = self.faces[index][:2]
        return image, visibility, index


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


class BlockShardSampler(Sampler[int]):
    """Item indices of a contiguous block of groups for one rank: groups of ``group_size`` consecutive items
    (2 for a verification pair, 1 for a single face) are kept whole, in order.

    Ranks get blocks that differ by at most one group; nothing is padded or repeated, so gathered results
    need no de-duplication beyond the item index itself (which the gatherer still checks).
    """

    def __init__(self, num_groups: int, group_size: int = 1, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        bounds = np.linspace(0, num_groups, num_replicas + 1).round().astype(int)
        self.group_size = group_size
        self.first_group, self.end_group = int(bounds[rank]), int(bounds[rank + 1])

    def __len__(self) -> int:
        return self.group_size * (self.end_group - self.first_group)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.group_size * self.first_group, self.group_size * self.end_group))


class PairShardSampler(BlockShardSampler):
    """Image indices of a contiguous block of whole pairs (images 2i, 2i+1) for one rank."""

    def __init__(self, num_pairs: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(num_pairs, group_size=2, num_replicas=num_replicas, rank=rank)
