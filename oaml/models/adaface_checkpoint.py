"""Load released AdaFace checkpoints (github.com/mk-minchul/AdaFace) into OAML's IResNet and AdaFace head.

A released ``.ckpt`` is a ``torch.save``-d dict whose only entry is ``state_dict`` (the Lightning module's
weights): backbone keys carry the prefix ``model.``, margin-head keys are ``head.kernel`` [512, classes],
``head.batch_mean``, ``head.batch_std`` and ``head.t``. :class:`~oaml.models.iresnet.IResNet` keeps AdaFace's
module names, so the backbone loads strictly after stripping ``model.``; only OAML's own
``occlusion_head.*`` stays at its fresh initialisation and is listed in the report.

Input convention: AdaFace models were trained on **BGR** images normalised as ``(x / 255 - 0.5) / 0.5``.
InsightFace data decodes to RGB, so feeding AdaFace weights needs a channel flip. That conversion lives in one
place, the data transforms (a config key), not here: this module only moves weights.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from oaml.models.iresnet import IResNet, build_backbone
from oaml.models.margin_heads import AdaFace

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "model."
HEAD_PREFIX = "head."
HEAD_KEYS = ("kernel", "batch_mean", "batch_std", "t")
OAML_ONLY_PREFIX = "occlusion_head."
# BatchNorm's step counter does not affect inference; tolerate checkpoints written without it.
OPTIONAL_SUFFIX = "num_batches_tracked"


@dataclass
class AdaFaceLoadReport:
    """What :func:`load_adaface_state` did.

    Attributes:
        path: the checkpoint file.
        missing_keys: our keys the checkpoint does not provide (OAML's ``occlusion_head.*``, and any BN
            ``num_batches_tracked`` counters); these keep their current values.
        unused_keys: checkpoint keys that were not loaded: a head without a receiving module, entries outside
            ``model.*`` and ``head.*``, and ``model.occlusion_head.*`` (OAML's head is never taken from an
            AdaFace checkpoint). Extra ``model.*`` backbone keys are an error, not listed here.
        head_loaded: whether ``head.*`` was copied into the given AdaFace head.
        checkpoint_num_classes: the class count of the checkpoint's head (None if it has none).
        head_message: why the head was not loaded, when it was not.
    """

    path: Path
    missing_keys: list[str] = field(default_factory=list)
    unused_keys: list[str] = field(default_factory=list)
    head_loaded: bool = False
    checkpoint_num_classes: int | None = None
    head_message: str | None = None


def _describe(backbone: IResNet) -> str:
    return (
        f"IResNet(units={backbone.units}, channels={backbone.channels}, se={backbone.se}, "
        f"input_size={backbone.input_size}, embedding_size={backbone.embedding_size})"
    )


def read_adaface_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The flat ``state_dict`` of an AdaFace checkpoint (also accepts a bare state dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AdaFace checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers; released AdaFace checkpoints "
            f"contain only a state_dict. Re-save just its state_dict. ({error})"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} is not an AdaFace checkpoint: expected a dict, got {type(checkpoint).__name__}"
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not any(str(k).startswith(BACKBONE_PREFIX) for k in state):
        raise ValueError(
            f"{path} is not an AdaFace checkpoint: no '{BACKBONE_PREFIX}*' backbone keys in its state_dict "
            f"(top-level keys: {sorted(map(str, checkpoint))[:8]})"
        )
    return state


def load_adaface_state(backbone: IResNet, path: str | Path, head: AdaFace | None = None) -> AdaFaceLoadReport:
    """Copy an AdaFace checkpoint's weights into ``backbone`` (strictly) and, if given and compatible, ``head``.

    Every backbone key except ``occlusion_head.*`` must be present with the same shape, and every ``model.*``
    key of the checkpoint must exist in the backbone (an IR-SE checkpoint loaded into a plain IR model would
    otherwise silently lose its SE weights); otherwise a ValueError names the key and the architecture
    (usually the wrong ``arch`` or ``input_size``). The head is loaded only when its class count matches the
    checkpoint's; a mismatch is reported, not raised, because fine-tuning on another data set needs a fresh
    head.
    """
    path = Path(path)
    state = read_adaface_state_dict(path)
    report = AdaFaceLoadReport(path=path)

    ckpt_backbone = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    ckpt_head = {k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    report.unused_keys = [k for k in state if not k.startswith((BACKBONE_PREFIX, HEAD_PREFIX))]

    ours = backbone.state_dict()
    required = [k for k in ours if not k.startswith(OAML_ONLY_PREFIX)]
    absent = [k for k in required if k not in ckpt_backbone and not k.endswith(OPTIONAL_SUFFIX)]
    if absent:
        raise ValueError(
            f"{path} does not fit {_describe(backbone)}: {len(absent)} backbone keys missing, e.g. "
            f"'{BACKBONE_PREFIX}{absent[0]}'. Is the arch (or input_size) the one the checkpoint was trained with?"
        )
    extra = [k for k in ckpt_backbone if k not in ours and not k.startswith(OAML_ONLY_PREFIX)]
    if extra:
        hint = (
            "The checkpoint has SE blocks: IR-SE weights need an IR-SE model (arch=ir_se50)."
            if not backbone.se and any(".se_block." in k for k in extra)
            else "Is the arch the one the checkpoint was trained with?"
        )
        raise ValueError(
            f"{path} does not fit {_describe(backbone)}: {len(extra)} checkpoint backbone keys have no "
            f"place in the model, e.g. '{BACKBONE_PREFIX}{extra[0]}'. {hint}"
        )
    for key in required:
        if key in ckpt_backbone and ckpt_backbone[key].shape != ours[key].shape:
            raise ValueError(
                f"{path} does not fit {_describe(backbone)}: '{BACKBONE_PREFIX}{key}' has shape "
                f"{tuple(ckpt_backbone[key].shape)} in the checkpoint but {tuple(ours[key].shape)} in the model. "
                "Is the arch (or input_size) the one the checkpoint was trained with?"
            )
    to_load = {k: v for k, v in ckpt_backbone.items() if k in ours and not k.startswith(OAML_ONLY_PREFIX)}
    report.unused_keys += [BACKBONE_PREFIX + k for k in ckpt_backbone if k not in to_load]
    backbone.load_state_dict(to_load, strict=False)
    report.missing_keys = [k for k in ours if k not in to_load]

    if "kernel" in ckpt_head:
        report.checkpoint_num_classes = int(ckpt_head["kernel"].shape[1])
    head_unused = [HEAD_PREFIX + k for k in ckpt_head]
    if head is None:
        report.head_message = "no head given" if ckpt_head else "the checkpoint has no head"
    elif not all(k in ckpt_head for k in HEAD_KEYS):
        report.head_message = f"the checkpoint lacks head keys {[k for k in HEAD_KEYS if k not in ckpt_head]}"
    elif ckpt_head["kernel"].shape != head.kernel.shape:
        report.head_message = (
            f"head not loaded: the checkpoint's head.kernel is {tuple(ckpt_head['kernel'].shape)} "
            f"({report.checkpoint_num_classes} classes) but the given head's is {tuple(head.kernel.shape)}"
        )
    else:
        head.load_state_dict({k: ckpt_head[k] for k in HEAD_KEYS}, strict=True)
        report.head_loaded = True
        head_unused = [HEAD_PREFIX + k for k in ckpt_head if k not in HEAD_KEYS]
    report.unused_keys += head_unused
    return report


def load_adaface_checkpoint(path: str | Path, arch: str, **backbone_kwargs) -> IResNet:
    """Build ``build_backbone(arch, **backbone_kwargs)`` and load an AdaFace checkpoint's backbone into it.

    ``arch`` takes OAML or AdaFace names (``ir_50``, ``ir_101``, ``ir_se_50``...). Returns the model in eval
    mode and logs the load report (keys kept at initialisation, checkpoint keys not used, the head);
    use :func:`load_adaface_state` for the report as an object or to load the margin head too.
    """
    backbone = build_backbone(arch, **backbone_kwargs)
    try:
        report = load_adaface_state(backbone, path)
    except ValueError as error:
        raise ValueError(f"arch={arch!r}: {error}") from error
    log_load_report(report)
    return backbone.eval()


def log_load_report(report: AdaFaceLoadReport) -> None:
    """Log what a load did: unused checkpoint keys as a warning, the rest as information."""
    log.info(
        "Loaded the AdaFace backbone from %s; keys kept at their initialisation: %s",
        report.path,
        report.missing_keys or "none",
    )
    if report.unused_keys:
        log.warning("AdaFace checkpoint %s: keys not used: %s", report.path, report.unused_keys)
    if report.head_loaded:
        log.info("Loaded the AdaFace head (%s classes) from %s", report.checkpoint_num_classes, report.path)
    else:
        log.info("AdaFace head not loaded from %s: %s", report.path, report.head_message)
