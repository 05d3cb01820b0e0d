"""A callback that records, per training step, whether QAConv was given the predicted visibility; added to real
runs through the config (``+callbacks.matcher_probe._target_=matcher_probe.RecordMatcherVisibility``)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch


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


class RecordErasure(pl.Callback):
    """Writes ``{global_step: body input == erase_hidden(batch images, their downsampled targets)}`` of every
    training step to ``out_dir/erasure.json``: whether the body's erasure follows the known visibility."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.follows_targets: dict[int, bool] = {}
        self._body_input = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def record(module, args) -> None:
            if module.training:
                self._body_input = args[0].detach().clone()

        pl_module.backbone.input_layer.register_forward_pre_hook(record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from oaml.losses.occlusion import downsample_visibility
        from oaml.models import IResNet

        main, masks = (batch["main"], batch.get("masks")) if isinstance(batch, dict) else (batch, None)
        images, visibility = main[0], main[2]
        if masks is not None:
            images, visibility = torch.cat([images, masks[0]]), torch.cat([visibility, masks[1]])
        expected = IResNet.erase_hidden(
            images, downsample_visibility(visibility, pl_module.backbone.feature_size)
        )
        self.follows_targets[trainer.global_step] = bool(torch.equal(self._body_input, expected))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "erasure.json").write_text(json.dumps(self.follows_targets))
