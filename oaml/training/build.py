"""Assemble the LightningModule from a composed config: the one place that reads config groups together.

The parts depend on each other's shapes (the head on the embedding size and the class count, QAConv on
the feature map), so they are instantiated here in order, each from its own group, with the derived
arguments passed explicitly; the constructors themselves only ever see plain arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from oaml.training.module import LOSS_NAMES, OAMLModule


def build_model(cfg: DictConfig, num_classes: int, val_set_names: Sequence[str]) -> OAMLModule:
    backbone = instantiate(cfg.backbone)
    height, width = backbone.feature_size
    head = instantiate(cfg.head, embedding_size=backbone.embedding_size, num_classes=num_classes)
    matcher = instantiate(cfg.matcher, num_features=backbone.feature_channels, height=height, width=width)
    opt = cfg.optimizer
    return OAMLModule(
        backbone=backbone,
        margin_head=head,
        matcher=matcher,
        matching_loss=instantiate(cfg.loss.matching),
        occlusion_loss=instantiate(cfg.loss.occlusion_loss),
        loss_weights={name: cfg.loss[name] for name in LOSS_NAMES},
        optimizer=instantiate(opt.optimizer),
        lr_scheduler=instantiate(opt.lr_scheduler) if opt.get("lr_scheduler") else None,
        scheduler_interval=opt.get("scheduler_interval", "epoch"),
        head_lr=opt.get("head_lr"),
        detach_visibility=cfg.occlusion.detach_visibility,
        fusion=OmegaConf.to_container(cfg.val.fusion),
        val_set_names=val_set_names,
        checkpoint_info={
            "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
            "head": OmegaConf.to_container(cfg.head, resolve=True),
            "matcher": OmegaConf.to_container(cfg.matcher, resolve=True),
            "num_classes": num_classes,
            "channel_order": cfg.data.channel_order,
        },
    )
