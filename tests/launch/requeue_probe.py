"""A Lightning callback for the requeue tests: it records every start of a run (which SLURM restart, from
which step) and holds the job's *first* start after a number of epochs, as a long training would still be
running, until SLURM stops it (``scontrol requeue``, a time limit). Later starts run at full speed.

Added through the config (``+callbacks.requeue_probe._target_=requeue_probe.HoldFirstStart``) with
``tests/launch`` on PYTHONPATH. It changes no number: it only waits between epochs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl


class HoldFirstStart(pl.Callback):
    def __init__(self, out_dir: str, hold_at_epoch: int = 1, hold_s: float = 240.0) -> None:
        self.out_dir = Path(out_dir)
        self.hold_at_epoch = hold_at_epoch
        self.hold_s = hold_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "step": trainer.global_step,
            "pid": os.getpid(),
        }
        with (self.out_dir / "starts.jsonl").open("a") as out:
            out.write(json.dumps(record) + "\n")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first_start = int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0
        if not first_start or trainer.current_epoch != self.hold_at_epoch:
            return
        (self.out_dir / "holding").write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.hold_s
        # Signal handlers run between these sleeps: submitit's USR2 handler requeues and exits; SIGTERM makes
        # Lightning stop at the next batch.
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.1)
