"""Training items addressed by where they sit in the run, so that a resume draws exactly what was drawn.

Two things made a resumed run differ from an uninterrupted one (issue 13):

- Augmentations (pasted occluders, AdaFace's crop / low resolution / photometric / flip, the niqab set's flip
  and crop) drew from generators that lived in each loader worker and advanced item after item. A run resumed
  in mid-epoch starts new workers, whose streams begin again: other occluders, other crops.
- Lightning creates a resumed run's first training iterator *before* it calls ``set_epoch``; a sampler that
  reads its epoch when iterated (torch's ``DistributedSampler``, or any sampler once loader workers prefetch)
  then deals epoch 0's order in a later epoch.

Here every training item is fetched by a key ``(index, entropy)`` where ``entropy`` is
``(stream, epoch, pass, batch, position)``: which loader, which epoch, which pass over a cycled loader, which
batch of the pass, which slot of the batch. ``KeyedItems`` sets that entropy as the *current item* while the
dataset builds the item, and ``oaml.data.item_rng.WorkerSeededGenerator`` seeds from it. An item's
randomness is then a pure function of its place in the run, in any process, with any number of workers, after
any resume.
``KeyedBatches`` also carries the mid-epoch resume (skip the batches trained before the checkpoint) for any
batch sampler, and sets the resumed epoch before Lightning's early iterator is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, Sampler

from oaml.data.item_rng import Entropy, item_entropy

Key = tuple[int, Entropy]


class KeyedItems(Dataset):
    """``dataset`` addressed by keys ``(index, entropy)`` (plain indices still work, without an entropy)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | Key) -> Any:
        if isinstance(key, tuple):
            index, entropy = key
            with item_entropy(entropy):
                return self.dataset[index]
        return self.dataset[key]


class KeyedBatches(Sampler[list[Key]]):
    """Each batch of ``batch_sampler`` as keys ``(index, (stream, epoch, pass, batch, position))``.

    ``stream`` tells two loaders of one run apart (the main and the mask stream). A loader that is iterated
    again within an epoch (the mask stream, cycled along a longer main stream) counts its passes, so a face
    met in a second pass gets new augmentation. ``sampler`` is the inner batch sampler's ``sampler``, the
    object Lightning's per-epoch ``set_epoch`` must reach (``loader.batch_sampler.sampler``).
    """

    def __init__(self, batch_sampler: Any, stream: int) -> None:
        self.batch_sampler = batch_sampler
        self.stream = int(stream)
        self._resume: tuple[int, int] | None = None
        self._passes: tuple[int, int] = (-1, 0)  # (epoch, passes started in it)

    @property
    def sampler(self) -> Any:
        return self.batch_sampler.sampler

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def resume_within_epoch(self, epoch: int, batches_done: int) -> None:
        """The next iteration continues ``epoch`` after its first ``batches_done`` batches (counted over
        passes for a cycled loader), exactly as an uninterrupted run would have gone on."""
        if batches_done < 0:
            raise ValueError(f"batches_done must be >= 0, got {batches_done}")
        # Lightning makes the resumed run's first iterator before its set_epoch: set the epoch now.
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self._resume = (int(epoch), int(batches_done))

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, length = self.epoch, len(self)
        if self._resume is not None and self._resume[0] == epoch and length > 0:
            current_pass, skip = divmod(self._resume[1], length)
        else:
            current_pass, skip = (self._passes[1] if self._passes[0] == epoch else 0), 0
        self._resume = None
        self._passes = (epoch, current_pass + 1)
        for number, batch in enumerate(self.batch_sampler):
            if number < skip:
                continue  # drawn all the same, so that the rest come from the same random stream
            head = (self.stream, epoch, current_pass, number)
            yield [(int(index), (*head, slot)) for slot, index in enumerate(batch)]
