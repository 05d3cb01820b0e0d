"""The LightningDataModule: two training streams and pair-sharded verification sets.

Datasets arrive already constructed (Hydra instantiates them from ``data.train``, ``data.masks`` and
``val.sets``), so this module only decides *how* they are loaded:

- the main stream: P identities x K images per batch (QAConv's pairwise loss needs positives in every batch);
- the occlusion stream (when a mask set is configured): mask-set faces mixed with clean main-stream faces
  (``MaskStream``), cycled alongside the main stream by Lightning's ``CombinedLoader`` (``max_size_cycle``);
  a training batch is then ``{"main": (images, labels, visibility), "masks": (images, visibility)}``;
- validation: whole pairs per batch and per rank for verification sets (``val.sets``), then single faces
  for mask sets (``val.mask_sets``: held-out faces with true visibility masks, OcclusionHead quality only);
- the uint8 -> float conversion on the device after transfer (cheaper to move uint8, and the one place
  where ``channel_order`` is applied).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from oaml.data.pipeline.item_keys import KeyedBatches, KeyedItems
from oaml.data.pipeline.mask_stream import MaskStream, provides_visibility
from oaml.data.pipeline.normalize import check_channel_order, normalize_faces
from oaml.data.pipeline.pair_sharding import BlockShardSampler, IndexedFaces, IndexedPairs
from oaml.data.pipeline.sampler import IdentityBalancedBatchSampler
from oaml.errors import ConfigError

# Lightning warns on every mid-epoch resume that the loaders cannot resume; these can (KeyedBatches skips the
# batches trained before the checkpoint; tests/training/test_kill_resume.py compares the final metrics).
warnings.filterwarnings(
    "ignore", message="You're resuming from a checkpoint that ended before the epoch ended"
)


class OAMLDataModule(pl.LightningDataModule):
    def __init__(
        self,
        train: Dataset | None = None,
        val_sets: Mapping[str, Dataset] | None = None,
        mask_val_sets: Mapping[str, Dataset] | None = None,
        masks: Dataset | None = None,
        batch_size: int = 64,
        mask_batch_size: int = 16,
        mask_clean_fraction: float = 0.2,
        num_instances: int = 4,
        epoch_size: str = "identities",
        identity_weighting: float = 0.0,
        val_batch_size: int = 128,
        num_workers: int = 2,
        channel_order: str = "rgb",
        seed: int = 0,
        pin_memory: bool = False,
        on_bad_image: str = "error",
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
    ) -> None:
        super().__init__()
        if train is not None and not (hasattr(train, "labels") and hasattr(train, "num_classes")):
            raise TypeError(
                f"data.train ({type(train).__name__}) must expose `labels` and `num_classes` "
                "for identity-balanced sampling"
            )
        if val_batch_size % 2:
            raise ConfigError(
                f"data.val_batch_size must be even so batches hold whole pairs, got {val_batch_size}"
            )
        if masks is not None and train is None:
            raise ConfigError("data.masks needs data.train: the mask stream mixes in clean main-stream faces")
        self.train_set = train
        self.mask_stream = MaskStream(masks, train, mask_clean_fraction, seed) if masks is not None else None
        self.mask_batch_size = mask_batch_size
        self.val_sets = {name: IndexedPairs(ds, name) for name, ds in (val_sets or {}).items()}
        self.mask_val_sets = {name: IndexedFaces(ds, name) for name, ds in (mask_val_sets or {}).items()}
        clash = sorted(set(self.val_sets) & set(self.mask_val_sets))
        if clash:
            raise ConfigError(f"val.sets and val.mask_sets both name {clash}: rename one of them")
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.epoch_size = epoch_size
        self.identity_weighting = identity_weighting
        self.val_batch_size = val_batch_size
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(
                f"data.num_workers must be an int >= 0 (0: load in the main process), got {num_workers!r}"
            )
        if not isinstance(prefetch_factor, int) or prefetch_factor < 1:
            raise ConfigError(
                f"data.prefetch_factor must be an int >= 1 (batches each worker loads ahead), got {prefetch_factor!r}"
            )
        self.num_workers = num_workers
        self.persistent_workers = bool(persistent_workers)
        self.prefetch_factor = prefetch_factor
        self.channel_order = check_channel_order(channel_order)
        self.seed = seed
        self.pin_memory = pin_memory
        # Applied by the readers (data.train.on_bad_image follows it); here for the report.
        self.on_bad_image = on_bad_image
        if train is not None:
            # The batch shape against the data, before any model is built (again per rank at fit time).
            IdentityBalancedBatchSampler(
                train.labels,
                batch_size,
                num_instances,
                num_replicas=1,
                rank=0,
                epoch_size=epoch_size,
                identity_weighting=identity_weighting,
            )

    @property
    def num_classes(self) -> int:
        return int(self._require_train().num_classes)

    def _require_train(self) -> Dataset:
        if self.train_set is None:
            raise ConfigError(
                "no training data: set data.train (this data module was built for evaluation only)"
            )
        return self.train_set

    @property
    def main_visibility_known(self) -> bool:
        """Whether main-stream visibility is information (drawn or pasted occluders), not an all-ones placeholder."""
        return self.train_set is not None and provides_visibility(self.train_set)

    @property
    def occlusion_supervised(self) -> bool:
        """Whether any training image has a known visibility target (else the occlusion loss is pointless)."""
        return self.mask_stream is not None or self.main_visibility_known

    def data_metrics(self) -> dict[str, float]:
        """Data-quality figures for ``metrics.json``: unreadable training images skipped in this run (by this
        process and its loader workers) when ``data.on_bad_image=skip``."""
        readers = [d for d in (self.train_set, getattr(self.mask_stream, "masks", None)) if d is not None]
        bad = [r.bad_images for r in readers if getattr(r, "bad_images", None) is not None]
        if not any(b.policy == "skip" for b in bad):
            return {}
        return {"data/bad_images_skipped": float(sum(b.count for b in bad))}

    @property
    def val_set_names(self) -> list[str]:
        """Every validation set in loader order: verification sets, then mask sets."""
        return [*self.val_sets, *self.mask_val_sets]

    @property
    def mask_val_set_names(self) -> list[str]:
        return list(self.mask_val_sets)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.num_workers > 0
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            # Page-locked memory only speeds up copies to a GPU; without one, torch warns at every loader.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            # Workers kept across epochs: no restart (and dataset re-pickling) at each epoch and validation.
            persistent_workers=workers and self.persistent_workers,
            # torch refuses a prefetch factor without workers.
            prefetch_factor=self.prefetch_factor if workers else None,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        world_size, rank = self._world()
        sampler = IdentityBalancedBatchSampler(
            self._require_train().labels,
            batch_size=self.batch_size,
            num_instances=self.num_instances,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            epoch_size=self.epoch_size,
            identity_weighting=self.identity_weighting,
        )
        # Keyed items: augmentation depends on the item's place in the run, not on a worker's history.
        main_batches = KeyedBatches(sampler, stream=0)
        main = self._loader(KeyedItems(self.train_set), batch_sampler=main_batches)
        position = _resumed_position(self.trainer)
        if position is not None and position[1] >= len(main_batches):
            # A checkpoint after an epoch's last batch: the first iterator Lightning makes (before its
            # set_epoch, and prefetched at once by loader workers) serves the next epoch, whole.
            position = (position[0] + 1, 0)
        if self.mask_stream is None:
            if position is not None:
                main_batches.resume_within_epoch(*position)
            return main
        if len(self.mask_stream) // world_size < self.mask_batch_size:
            raise ConfigError(
                f"the mask stream (data.masks: {len(self.mask_stream)} faces with the clean ones, over {world_size} "
                f"process(es)) is smaller than one batch of data.mask_batch_size={self.mask_batch_size}; "
                "lower data.mask_batch_size or add mask data"
            )
        mask_sampler = DistributedSampler(
            self.mask_stream, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        mask_batches = KeyedBatches(
            BatchSampler(mask_sampler, self.mask_batch_size, drop_last=True), stream=1
        )
        masks = self._loader(KeyedItems(self.mask_stream), batch_sampler=mask_batches)
        if position is not None:
            # The mask loader cycles along the main one: it resumes at the same batch count, in its own passes.
            main_batches.resume_within_epoch(*position)
            mask_batches.resume_within_epoch(*position)
        # The main stream defines the epoch: a small mask set cycles along it; a larger one is cut short (and
        # reshuffled next epoch), so that an epoch never repeats main-stream batches.
        mode = "max_size_cycle" if len(masks) <= len(main) else "min_size"
        return CombinedLoader({"main": main, "masks": masks}, mode=mode)

    def val_dataloader(self) -> list[DataLoader]:
        world_size, rank = self._world()
        # Per set: (name, dataset, groups a rank never splits, images per group, what a group is).
        shards = [(name, ds, len(ds.issame), 2, "pairs") for name, ds in self.val_sets.items()]
        shards += [(name, ds, len(ds), 1, "faces") for name, ds in self.mask_val_sets.items()]
        loaders = []
        for name, dataset, groups, group_size, unit in shards:
            if groups < world_size:
                # A process with nothing to score would skip the collective gather the others wait in.
                raise ConfigError(
                    f"validation set '{name}' has {groups} {unit}, fewer than the {world_size} processes: each "
                    "process scores its own share; use a larger set (e.g. data.masks.val_fraction) or fewer devices"
                )
            sampler = BlockShardSampler(groups, group_size, num_replicas=world_size, rank=rank)
            loaders.append(self._loader(dataset, batch_size=self.val_batch_size, sampler=sampler))
        return loaders

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, Mapping):  # the two training streams
            return {
                name: self.on_after_batch_transfer(stream, dataloader_idx) for name, stream in batch.items()
            }
        images, *rest = batch
        return [normalize_faces(images, self.channel_order), *rest]


def _resumed_position(trainer: pl.Trainer | None) -> tuple[int, int] | None:
    """(epoch, batches already trained in it) while fit restores a checkpoint taken inside an epoch.

    Lightning restarts such an epoch with a fresh loader iterator and trains only the batches it has left;
    the batch samplers must then skip the ones trained before the checkpoint, or they would repeat them and
    never reach the epoch's last batches.
    """
    if trainer is None or not trainer.fit_loop.restarting:
        return None
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    if done == 0:
        return None
    return trainer.fit_loop.epoch_progress.current.processed, done
