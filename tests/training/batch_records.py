"""A callback that records what every training batch held, added to real runs through the config
(``+callbacks.train_labels._target_=batch_records.RecordTrainLabels``), also in DDP ranks started as
subprocesses (their PYTHONPATH holds this folder). Kept out of the test modules so a rank imports nothing
else of the tests (conftest would reset torch's thread count there)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl


class RecordTrainLabels(pl.Callback):
    """Writes, per global step, the labels of the training batch and its (epoch, batch index) to
    ``labels_rank<R>.json`` in ``out_dir``, so that runs and ranks can be compared step by step."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.labels_by_step: dict[int, list[int]] = {}
        self.position_by_step: dict[int, list[int]] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int
    ) -> None:
        self.labels_by_step[trainer.global_step] = batch[1].tolist()
        self.position_by_step[trainer.global_step] = [trainer.current_epoch, batch_idx]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {
            "world_size": trainer.world_size,
            "labels_by_step": self.labels_by_step,
            "position_by_step": self.position_by_step,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"labels_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def read_labels(out_dir: Path, rank: int = 0) -> dict:
    """What ``RecordTrainLabels`` wrote for ``rank``, with integer step keys."""
    record = json.loads((Path(out_dir) / f"labels_rank{rank}.json").read_text())
    for key in ("labels_by_step", "position_by_step"):
        record[key] = {int(step): value for step, value in record[key].items()}
    return record
