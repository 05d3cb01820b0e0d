"""``last.ckpt``: the latest training state, written so that ``ckpt_path=`` resumes it exactly.

Lightning's own ways of keeping a "last" checkpoint each lose training on resume in Lightning 2.6:

- ``ModelCheckpoint(save_last=True)`` writes only when its monitored checkpoint is saved in that step, so
  ``last.ckpt`` goes stale while the monitored metric stops improving;
- a checkpoint written at ``on_train_epoch_end`` (``save_on_train_epoch_end``) resumes a ``max_steps`` run
  with one empty epoch (Lightning issue #19617);
- a checkpoint written after ``trainer.fit`` returns records a run stopped by ``max_steps`` mid-epoch as
  having finished that epoch: the resumed run skips the rest of it (measured: 2 steps, then a resume to
  2 epochs of 3 batches gave 3 steps in all instead of 6).

Saved from ``on_train_batch_end``, where Lightning takes its own step checkpoints, the loop state resumes
exactly (measured: 2 steps + resume == 3 steps + resume == 9 steps uninterrupted). The file is written
beside its final name and renamed over it, so a crash while writing never destroys the previous one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class LastCheckpoint(pl.Callback):
    """Write ``dirpath/filename.ckpt`` after every ``every_n_epochs``-th epoch, every ``every_n_train_steps``-th
    step (None: never in mid-epoch) and after the run's final step.

    Long epochs (an MS1MV2 epoch is 11k steps at batch 512) want step checkpoints: a killed job then loses at
    most ``every_n_train_steps`` steps, and the resume from mid-epoch is exact (``oaml.data.pipeline.item_keys``). The
    final step is the one that reaches ``trainer.max_steps``, or the last batch of the last epoch, so a
    run stopped by either limit always leaves its final weights (with optimizer and loop state).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        filename: str = "last",
        every_n_epochs: int = 1,
        every_n_train_steps: int | None = None,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.last_checkpoint.every_n_epochs must be >= 1, got {every_n_epochs}")
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(
                "callbacks.last_checkpoint.every_n_train_steps must be >= 1 or null (only at epoch ends), "
                f"got {every_n_train_steps}"
            )
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(trainer, batch_idx):
            self.save(trainer)

    def _due(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
            return True
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            return True
        if batch_idx + 1 < trainer.num_training_batches:
            return False
        epochs_done = trainer.current_epoch + 1
        last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= epochs_done
        return last_epoch or epochs_done % self.every_n_epochs == 0

    def save(self, trainer: pl.Trainer) -> None:
        """Every rank calls this (saving is collective under DDP); rank 0 writes and renames."""
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        trainer.strategy.barrier("LastCheckpoint.save")
