"""A callback that records, per training step, whether QAConv was given the predicted visibility; added to real
runs through the config (``+callbacks.matcher_probe._target_=matcher_probe.RecordMatcherVisibility``)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl


class RecordMatcherVisibility(pl.Callback):
    """Writes ``{global_step: visibility given}`` of every training forward of the matcher to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.given: dict[int, bool] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def record(module, args, kwargs) -> None:
            if module.training:
                self.given[trainer.global_step] = kwargs.get("prob_occ") is not None

        pl_module.matcher.register_forward_pre_hook(record, with_kwargs=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "matcher_visibility.json").write_text(json.dumps(self.given))
