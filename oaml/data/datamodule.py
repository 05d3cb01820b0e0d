"""The LightningDataModule: identity-balanced training batches and pair-sharded verification sets.

Datasets arrive already constructed (Hydra instantiates them from ``data.train`` and ``val.sets``), so this
module only decides *how* they are loaded: P identities x K images per training batch (QAConv's pairwise
loss needs positives inside every batch), whole pairs per validation batch and per rank, and the uint8 ->
float conversion on the device after transfer (cheaper to move uint8, and it is the one channel-order point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from oaml.data.normalize import check_channel_order, normalize_faces
from oaml.data.pair_sharding import IndexedPairs, PairShardSampler
from oaml.data.sampler import IdentityBalancedBatchSampler


class OAMLDataModule(pl.LightningDataModule):
    def __init__(
        self,
        train: Dataset | None = None,
        val_sets: Mapping[str, Dataset] | None = None,
        batch_size: int = 64,
        num_instances: int = 4,
        val_batch_size: int = 128,
        num_workers: int = 2,
        channel_order: str = "rgb",
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if train is not None and not (hasattr(train, "labels") and hasattr(train, "num_classes")):
            raise TypeError(
                f"data.train ({type(train).__name__}) must expose `labels` and `num_classes` "
                "for identity-balanced sampling"
            )
        if val_batch_size % 2:
            raise ValueError(
                f"data.val_batch_size must be even so batches hold whole pairs, got {val_batch_size}"
            )
        self.train_set = train
        self.val_sets = {name: IndexedPairs(ds, name) for name, ds in (val_sets or {}).items()}
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.channel_order = check_channel_order(channel_order)
        self.seed = seed
        self.pin_memory = pin_memory

    @property
    def num_classes(self) -> int:
        return int(self._require_train().num_classes)

    def _require_train(self) -> Dataset:
        if self.train_set is None:
            raise ValueError(
                "no training data: set data.train (this data module was built for evaluation only)"
            )
        return self.train_set

    @property
    def val_set_names(self) -> list[str]:
        return list(self.val_sets)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        world_size, rank = self._world()
        sampler = IdentityBalancedBatchSampler(
            self._require_train().labels,
            batch_size=self.batch_size,
            num_instances=self.num_instances,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
        )
        return self._loader(self.train_set, batch_sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        world_size, rank = self._world()
        return [
            self._loader(
                ds,
                batch_size=self.val_batch_size,
                sampler=PairShardSampler(len(ds.issame), num_replicas=world_size, rank=rank),
            )
            for ds in self.val_sets.values()
        ]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, *rest = batch
        return [normalize_faces(images, self.channel_order), *rest]
