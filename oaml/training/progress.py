"""Progress as plain log lines, for runs whose output goes to a file (a SLURM log, ``> run.log``).

A progress bar redraws one terminal line; written to a file it is either silent until the end (Rich) or a
wall of carriage returns (tqdm). A cluster user reading ``slurm-123.out`` twenty minutes into a run needs
to see where the run is, how fast it goes and when it will end: ``ProgressLog`` logs one line every
``every_n_steps`` optimizer steps and one after every validation, through Python logging (so the lines also
reach Hydra's ``train.log``). In a terminal it stays silent unless ``only_without_terminal`` is false: the
progress bar is there.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger("oaml.progress")


def stdout_is_terminal() -> bool:
    """Whether a person watches this process's output live (a terminal) rather than a file or a pipe."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``65`` -> ``1m05s``; ``7.4`` -> ``7s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def count_images(batch: Any) -> int:
    """Images in a training batch: the leading size of every image tensor ([B,3,H,W]) in it, nested
    sequences and mappings included (the main stream and the mask stream both count)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim == 4 and batch.shape[1] == 3 else 0  # not [B,1,h,w] masks
    if isinstance(batch, Mapping):
        return sum(count_images(v) for v in batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return sum(count_images(v) for v in batch)
    return 0


class ProgressLog(pl.Callback):
    """Log ``epoch e/E step s/S | losses | images/s | ETA`` every ``every_n_steps`` steps and the
    validation metrics after each validation (global rank 0 only).

    ``only_without_terminal``: log only when stdout is not a terminal (the default: a terminal has its
    progress bar). ``metrics``: glob-free metric name suffixes shown after a validation, per set.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        only_without_terminal: bool = True,
        val_metrics: Sequence[str] = ("fused_acc", "occ_iou"),
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.progress_log.every_n_steps={every_n_steps} must be at least 1")
        self.every_n_steps = every_n_steps
        self.only_without_terminal = only_without_terminal
        self.val_metrics = tuple(val_metrics)
        self._active = True
        self._start_time = 0.0
        self._start_step = 0
        self._window_time = 0.0
        self._window_images = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = not (self.only_without_terminal and stdout_is_terminal())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_time = self._window_time = time.monotonic()
        self._start_step = trainer.global_step  # a resumed run counts its speed from here
        self._window_images = 0
        if self._active:
            self._log(f"training {self._total_text(trainer)} steps from step {trainer.global_step}")

    def _total_text(self, trainer: pl.Trainer) -> str:
        total = self._total_steps(trainer)
        return str(total) if total is not None else "?"

    @staticmethod
    def _total_steps(trainer: pl.Trainer) -> int | None:
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window_images += count_images(batch)
        step = trainer.global_step
        if not self._active or step == 0 or step % self.every_n_steps:
            return
        now = time.monotonic()
        images_per_s = self._window_images / max(now - self._window_time, 1e-9)
        self._window_time, self._window_images = now, 0
        total = self._total_steps(trainer)
        done = step - self._start_step
        eta = (total - step) * (now - self._start_time) / done if total is not None and done > 0 else math.nan
        losses = " ".join(
            f"{name.removeprefix('train/')} {float(value):.4g}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("train/loss")
        )
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else "?"
        self._log(
            f"epoch {trainer.current_epoch + 1}/{epochs} step {step}/{total if total is not None else '?'} | "
            f"{losses} | {images_per_s:.1f} img/s | ETA {format_duration(eta)}"
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or trainer.sanity_checking:
            return
        shown = [
            f"{name.removeprefix('val/')} {float(value):.4f}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("val/") and name.endswith(self.val_metrics)
        ]
        self._log(f"validation at step {trainer.global_step}: " + (", ".join(shown) or "no metrics"))

    @rank_zero_only
    def _log(self, message: str) -> None:
        log.info(message)
