"""A callback that stops a real training process at a chosen step so that a test can SIGKILL it there.

Added through the config (``+callbacks.pause._target_=kill_probe.PauseAtStep``) to a run started as a
subprocess whose PYTHONPATH holds this folder. It changes no number: it only waits after the step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class PauseAtStep(pl.Callback):
    """After global step ``step`` (once last.ckpt had its chance to be written), write ``marker`` and wait."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = Path(marker)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(f"{trainer.current_epoch} {batch_idx}")
            time.sleep(600)  # the test kills the process group meanwhile
