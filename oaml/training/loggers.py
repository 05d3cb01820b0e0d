"""The Trainer's logger and callbacks, from the config, as a Lightning user expects them to behave.

- ``trainer.logger=false`` runs without any logger (``logger=csv`` picks Lightning's CSV logger, for
  clusters without TensorBoard; ``logger=tensorboard`` is the default); callbacks that need a logger
  (``LearningRateMonitor``) are left out then, instead of aborting the run.
- ``trainer.enable_progress_bar=false`` leaves out the progress bar callback, which Lightning would otherwise
  refuse next to that flag; so does output that goes to a file rather than a terminal (a redrawn bar is
  noise in a log file: ``ProgressLog`` writes plain lines there instead).
- ``TensorBoardLogger`` keeps one event file per run: Lightning's logger closes its writer at the end of
  ``fit``, and the extra validation ``train()`` may run afterwards would open a second event file.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from oaml.training.progress import stdout_is_terminal

log = logging.getLogger(__name__)

NEEDS_A_LOGGER = (LearningRateMonitor,)


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger whose writer stays open across ``fit`` and later ``validate`` calls,
    so that a run writes one event file. ``finalize`` (called by Lightning after every stage) only flushes;
    ``close()`` ends the file, once the run is done (``train()`` calls it)."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.flush()
        if status == "success":
            self.save()

    @rank_zero_only
    def close(self) -> None:
        if self._experiment is not None:
            self._experiment.close()


def build_logger(cfg: DictConfig) -> Logger | bool:
    """The run's logger: ``False`` when ``trainer.logger=false`` or ``logger=null``, else ``cfg.logger``."""
    switch = cfg.trainer.get("logger")
    if switch is not None and not isinstance(switch, bool):
        raise ValueError(
            f"trainer.logger={switch!r}: use trainer.logger=false (no logger) or choose one with "
            "logger=tensorboard|csv (trainer.logger=null)"
        )
    if switch is False or cfg.get("logger") is None:
        return False
    return instantiate(cfg.logger)


def build_callbacks(cfg: DictConfig, has_logger: bool, show_progress_bar: bool) -> list[Callback]:
    """``cfg.callbacks``, without a progress bar where none is shown and without logger-only callbacks
    where there is no logger (each left out with a notice)."""
    callbacks = []
    for name, node in cfg.callbacks.items():
        if node is None:
            continue
        callback = instantiate(node)
        if isinstance(callback, ProgressBar) and not show_progress_bar:
            continue
        if isinstance(callback, NEEDS_A_LOGGER) and not has_logger:
            log.info("callbacks.%s left out: it needs a logger and this run has none.", name)
            continue
        callbacks.append(callback)
    return callbacks


def trainer_extras(cfg: DictConfig) -> dict[str, Any]:
    """Logger, callbacks and ``enable_progress_bar`` for ``instantiate(cfg.trainer, **extras)``."""
    logger = build_logger(cfg)
    show_bar = bool(cfg.trainer.get("enable_progress_bar", True)) and stdout_is_terminal()
    callbacks = build_callbacks(cfg, has_logger=logger is not False, show_progress_bar=show_bar)
    return {"logger": logger, "callbacks": callbacks, "enable_progress_bar": show_bar}


def close_loggers(loggers: list[Logger]) -> None:
    """End the event files of the loggers that keep them open (``TensorBoardLogger`` above)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.close()
