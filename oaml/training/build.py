"""Assemble the LightningModule: from a composed config (training) or from a checkpoint (evaluation).

The parts depend on each other's shapes (the head on the embedding size and the class count, QAConv on
the feature map), so they are instantiated here in order, each from its own config node, with the derived
arguments passed explicitly; the constructors themselves only ever see plain arguments. A checkpoint keeps
those config nodes (``checkpoint["oaml"]``), so evaluation and export rebuild exactly the trained model.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from oaml.data.pipeline.val_sets import VAL_PROTOCOL_DEFAULTS, val_protocol
from oaml.errors import ConfigError, MissingFileError
from oaml.losses import OcclusionLoss, PairwiseMatchingLoss
from oaml.models import AdaFace, load_adaface_state
from oaml.models.qaconv import WEIGHTINGS
from oaml.training.checkpoint import build_part
from oaml.training.module import LOSS_NAMES, OAMLModule

log = logging.getLogger(__name__)


def build_parts(
    backbone_cfg: Any, head_cfg: Any, matcher_cfg: Any, num_classes: int
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Backbone, margin head and matcher, wired to each other's sizes."""
    backbone = instantiate(backbone_cfg)
    height, width = backbone.feature_size
    head = instantiate(head_cfg, embedding_size=backbone.embedding_size, num_classes=num_classes)
    matcher = instantiate(matcher_cfg, num_features=backbone.feature_channels, height=height, width=width)
    return backbone, head, matcher


def build_model(
    cfg: DictConfig,
    num_classes: int,
    val_set_names: Sequence[str],
    occlusion_supervised: bool = True,
    main_visibility_known: bool = True,
    mask_val_set_names: Sequence[str] = (),
) -> OAMLModule:
    """The training model. Without any visibility target (``occlusion_supervised`` False) the occlusion
    loss would only teach "all visible", so it is switched off, with a notice. ``main_visibility_known``
    says whether main-stream visibility is a target or a placeholder (see ``OAMLModule.training_step``)."""
    backbone, head, matcher = build_parts(cfg.backbone, cfg.head, cfg.matcher, num_classes)
    init_from = OmegaConf.select(cfg, "model.init_from")
    if init_from:
        initialise_from_adaface(backbone, head, init_from)
    opt = cfg.optimizer
    loss_weights = loss_weights_from_config(cfg.loss)
    if not occlusion_supervised and loss_weights["occlusion"] > 0:
        log.warning(
            "No visibility targets (no data.masks set, no occluder augmentation on data.train): "
            "occlusion loss off (loss.occlusion %s -> 0).",
            loss_weights["occlusion"],
        )
        loss_weights["occlusion"] = 0.0
    if getattr(backbone, "occlusion_erase", False) and loss_weights["occlusion"] == 0:
        # An untrained head would erase arbitrary cells of every face at test time.
        if occlusion_supervised:
            raise ConfigError(
                "occlusion.erase=true erases what the OcclusionHead calls hidden, but loss.occlusion=0 leaves "
                "the head untrained: set loss.occlusion > 0 or occlusion.erase=false"
            )
        log.warning(
            "No visibility targets: the OcclusionHead cannot learn, so nothing is erased (occlusion.erase -> false)."
        )
        backbone.occlusion_erase = False
    backbone_info = OmegaConf.to_container(cfg.backbone, resolve=True)
    if "occlusion_erase" in backbone_info:  # what the checkpoint rebuilds: the backbone as trained
        backbone_info["occlusion_erase"] = bool(getattr(backbone, "occlusion_erase", False))
    return OAMLModule(
        backbone=backbone,
        margin_head=head,
        matcher=matcher,
        matching_loss=instantiate(cfg.loss.matching),
        occlusion_loss=instantiate(cfg.loss.occlusion_loss),
        loss_weights=loss_weights,
        optimizer=instantiate_checked(opt.optimizer, "optimizer.optimizer"),
        lr_scheduler=(
            instantiate_checked(opt.lr_scheduler, "optimizer.lr_scheduler")
            if opt.get("lr_scheduler")
            else None
        ),
        scheduler_interval=opt.get("scheduler_interval", "epoch"),
        head_lr=opt.get("head_lr"),
        detach_visibility=cfg.occlusion.detach_visibility,
        weighting_start_step=cfg.occlusion.weighting_start_step,
        erase_source=cfg.occlusion.get("erase_source", "predicted"),
        main_visibility_known=main_visibility_known,
        fusion=OmegaConf.to_container(cfg.val.fusion),
        val_erasure=cfg.val.get("erase", "own"),
        val_set_names=val_set_names,
        mask_val_set_names=mask_val_set_names,
        checkpoint_info={
            "backbone": backbone_info,
            "head": OmegaConf.to_container(cfg.head, resolve=True),
            "matcher": OmegaConf.to_container(cfg.matcher, resolve=True),
            "num_classes": num_classes,
            "channel_order": cfg.data.channel_order,
            "val_protocol": val_protocol(cfg.val),
        },
    )


def instantiate_checked(node: DictConfig, path: str) -> Any:
    """A config node instantiated, after refusing keys its ``_target_`` does not take, named by ``path``.

    Config groups compose: an experiment that sets the SGD schedule's ``milestones`` (or SGD's ``momentum``) still
    sets them when the command line swaps in ``optimizer=adamw``, whose warmup-cosine (and AdamW) take none.
    Without this check the run would die in ``configure_optimizers`` with a bare TypeError; here the error names
    the key and how to drop it.
    """
    target = get_object(node._target_)
    parameters = inspect.signature(target).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        accepted = {p.name for p in parameters}
        unknown = [key for key in node if not str(key).startswith("_") and key not in accepted]
        if unknown:
            keys = ", ".join(f"{path}.{key}" for key in unknown)
            drops = " ".join(f"~{path}.{key}" for key in unknown)
            raise ConfigError(
                f"{keys} is not a parameter of {node._target_} (set by another config group, e.g. an "
                f"experiment's setting for a different optimizer): drop it with `{drops}`"
            )
    return instantiate(node)


def inherit_val_protocol(val_cfg: DictConfig, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the protocol keys left null in an evaluation's ``val`` from the checkpoint's training run.

    Without this, scoring a model trained with grey occluders on grey faces (``real_faces_dev``) needed
    ``val.occluder_match_grayscale=true`` repeated on the command line, and forgetting it silently scored a
    different occluded twin than training had validated on. A value given on the command line wins;
    checkpoints written before the protocol was stored get the defaults. Returns the values in force.
    """
    trained = (checkpoint.get("oaml") or {}).get("val_protocol") or {}
    in_force = {}
    for key, default in VAL_PROTOCOL_DEFAULTS.items():
        if val_cfg.get(key) is None:
            if key in trained:
                val_cfg[key] = trained[key]
                log.info("val.%s=%s (from the checkpoint's training run)", key, val_cfg[key])
            else:
                val_cfg[key] = default
                log.warning(
                    "the checkpoint does not say which val.%s its run validated with (written by an older OAML): "
                    "using %s; give val.%s=... to score the twins that run saw",
                    key,
                    default,
                    key,
                )
        in_force[key] = val_cfg[key]
    return in_force


def loss_weights_from_config(loss_cfg: Any) -> dict[str, float]:
    """The ``loss.*`` weights as floats, refused when one is negative or not a number.

    A negative weight trains the model to *increase* that loss (a silent, ruinous typo in a sweep); zero is
    allowed: it switches the term off. ``train()`` calls this before any data is read, so a bad weight
    fails in seconds, not after the data and the model are built.
    """
    weights = {}
    for name in LOSS_NAMES:
        value = loss_cfg.get(name)
        try:
            weight = float(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"loss.{name}={value!r} is not a number; set loss.{name}=0.1 (0 switches the term off)"
            ) from error
        if weight != weight:  # NaN
            raise ConfigError(
                f"loss.{name}={value} is not a number; use a weight >= 0 (0 switches the term off)"
            )
        if weight < 0.0:
            raise ConfigError(
                f"loss.{name}={value} is negative: it would train the model to increase that loss; use a weight "
                f">= 0 (loss.{name}=0 switches the term off)"
            )
        weights[name] = weight
    return weights


def initialise_from_adaface(backbone: nn.Module, head: nn.Module, path: str) -> None:
    """Start training from a released AdaFace ``.ckpt`` (``model.init_from=PATH``), saying what was taken."""
    try:
        report = load_adaface_state(backbone, path, head=head if isinstance(head, AdaFace) else None)
    except FileNotFoundError as error:  # one line for the user, naming the key (oaml.errors)
        raise MissingFileError(f"model.init_from: {error}; give the path of an AdaFace .ckpt") from error
    except ValueError as error:
        raise ConfigError(f"model.init_from={path}: {error}") from error
    log.info(
        "Initialised the backbone from %s; new (randomly initialised) keys: %s; unused checkpoint keys: %s",
        path,
        report.missing_keys or "none",
        report.unused_keys or "none",
    )
    if report.head_loaded:
        log.info("Took the AdaFace head from %s (%s classes).", path, report.checkpoint_num_classes)
    else:
        log.warning("AdaFace head not taken from %s: %s", path, report.head_message)


def model_from_checkpoint(
    checkpoint: Mapping[str, Any],
    fusion: Mapping[str, float],
    val_set_names: Sequence[str],
    source: str | Path = "checkpoint",
    trusted: bool = False,
    mask_val_set_names: Sequence[str] = (),
    weighting: str | None = None,
    val_erasure: str = "own",
) -> OAMLModule:
    """Rebuild the trained model (weights loaded strictly) for validation only: no optimizer.

    Parts are built with ``oaml.training.checkpoint.build_part`` (allow-listed classes unless ``trusted``).
    ``weighting`` replaces QAConv's occlusion weighting for scoring (None: the mode it was trained with): a
    model trained with ``none`` can be scored with the predicted visibility, to measure what visibility adds
    at test time alone. The modes share their parameters; QAConv's BatchNorm statistics stay those of the
    trained mode.
    """
    info = checkpoint.get("oaml")
    if not info or "num_classes" not in info:
        raise ValueError(
            f"{source} is not an OAML training checkpoint (no checkpoint['oaml'] model description)"
        )
    backbone = build_part(checkpoint, "backbone", source, trusted)
    height, width = backbone.feature_size
    head = build_part(
        checkpoint,
        "head",
        source,
        trusted,
        embedding_size=backbone.embedding_size,
        num_classes=info["num_classes"],
    )
    matcher = build_part(
        checkpoint,
        "matcher",
        source,
        trusted,
        num_features=backbone.feature_channels,
        height=height,
        width=width,
    )
    if weighting is not None:
        if weighting not in WEIGHTINGS:
            raise ConfigError(
                f"weighting={weighting!r} is not a QAConv weighting; use one of {', '.join(WEIGHTINGS)} "
                "(or weighting=null for the mode the checkpoint was trained with)"
            )
        matcher.weighting = weighting
    model = OAMLModule(
        backbone=backbone,
        margin_head=head,
        matcher=matcher,
        matching_loss=PairwiseMatchingLoss(),
        occlusion_loss=OcclusionLoss(),
        loss_weights={},
        fusion=fusion,
        val_erasure=val_erasure,
        val_set_names=val_set_names,
        mask_val_set_names=mask_val_set_names,
        checkpoint_info=info,
    )
    state = dict(checkpoint["state_dict"])
    if not any(key.startswith("score_norm.") for key in state):
        # Checkpoints written before the impostor statistics existed: the fused score falls back to fixed weights.
        log.warning(
            "%s holds no impostor score statistics (written by an older OAML): the fused score uses the fixed "
            "weights (val.fusion.normalize=none)",
            source,
        )
        state.update({f"score_norm.{key}": value for key, value in model.score_norm.state_dict().items()})
    model.load_state_dict(state, strict=True)
    return model
