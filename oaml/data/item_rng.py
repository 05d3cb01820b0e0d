"""Per-item random generators: an augmentation's draws as a pure function of the item's place in the run.

``oaml.data.pipeline.item_keys`` fetches every training item under a key and makes that key's entropy the
*current item* (``item_entropy``) while the dataset builds it; a ``WorkerSeededGenerator`` seeds from it. Both
halves live here, below the three data subpackages, because the augmentations of the pipeline and the niqab
set's own mask augmentation (``oaml.data.formats.niqab``) use them alike: neither subpackage imports the other.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["Entropy", "WorkerSeededGenerator", "current_item_entropy", "item_entropy"]

Entropy = tuple[int, ...]

_current_item: Entropy | None = None


def current_item_entropy() -> Entropy | None:
    """The entropy of the item being built in this process (None outside a keyed fetch)."""
    return _current_item


@contextmanager
def item_entropy(entropy: Entropy | None) -> Iterator[None]:
    """Make ``entropy`` the current item's while the block runs (nested uses restore the outer one)."""
    global _current_item
    outer, _current_item = _current_item, entropy
    try:
        yield
    finally:
        _current_item = outer


def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


class WorkerSeededGenerator:
    """A numpy Generator for one augmentation: per training item, else per process.

    Inside a keyed fetch (`current_item_entropy()` is set) it is a fresh
    generator seeded from the item's key, the rank, `seed` and `salt`, kept for the rest of that item.
    Otherwise it is re-created whenever the process or torch's initial seed changes: a DataLoader worker is a
    new process whose `torch.initial_seed()` is base_seed + worker_id, with a fresh base_seed each epoch; the
    main process's initial seed is the run's seed. Mixing in the rank keeps DDP ranks (which share the run's
    seed) apart, and `salt` keeps two augmentations of the same worker apart.
    The generator is not pickled: a worker never starts from the parent's state.
    """

    def __init__(self, seed: int, salt: str) -> None:
        self.seed = int(seed)
        self._salt = zlib.crc32(salt.encode())
        self._generator: np.random.Generator | None = None
        self._owner: tuple[object, ...] | None = None

    def __call__(self) -> np.random.Generator:
        item = current_item_entropy()
        if item is not None:
            owner: tuple[object, ...] = ("item", os.getpid(), *item)
            if self._generator is None or self._owner != owner:
                entropy = [*item, _distributed_rank(), self.seed & 0xFFFFFFFFFFFFFFFF, self._salt]
                self._generator = np.random.default_rng(np.random.SeedSequence(entropy))
                self._owner = owner
            return self._generator
        owner = (os.getpid(), torch.initial_seed())
        if self._generator is None or self._owner != owner:
            entropy = [owner[1] & 0xFFFFFFFFFFFFFFFF, _distributed_rank(), self.seed, self._salt]
            self._generator = np.random.default_rng(np.random.SeedSequence(entropy))
            self._owner = owner
        return self._generator

    def __getstate__(self) -> dict[str, object]:
        return {"seed": self.seed, "_salt": self._salt, "_generator": None, "_owner": None}
