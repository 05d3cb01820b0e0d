"""Export a trained OAML backbone to ONNX or TorchScript for inference without OAML.

    python -m oaml.export ckpt=outputs/.../checkpoints/best.ckpt format=onnx [out=model.onnx]

The exported graph takes images [B, 3, S, S] (S = the backbone's input_size, preprocessed exactly as in
training) and returns three outputs: ``embedding`` [B, E] (L2-normalised), ``norm`` [B, 1] (the embedding's
length, AdaFace's quality proxy) and ``visibility`` [B, 1, h, w] (the occlusion head's map, 1 = visible).
The batch axis is dynamic. The file is written next to the checkpoint (``<stem>.onnx`` or
``<stem>.torchscript.pt``) unless ``out`` is given; an existing file is never overwritten.

Exporters (checked with torch 2.14): ONNX uses the TorchScript-based exporter (``dynamo=False``). The newer
torch.export-based exporter, the default since torch 2.9, needs the extra ``onnxscript`` package, and the
legacy one gives the same graph for this plain convolutional model; torch flags it as deprecated, so
revisit when it is removed. TorchScript uses ``torch.jit.trace`` (the model has no data-dependent control
flow); torch 2.14 marks ``torch.jit`` as deprecated in favour of ``torch.export`` (FutureWarning), but it works.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from oaml.errors import ConfigError, DataError, ExistingPathError, report_user_errors
from oaml.models.iresnet import IResNet
from oaml.paths import CONF_DIR
from oaml.training.checkpoint import build_part, load_checkpoint

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
BACKBONE_PREFIX = "backbone."
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["embedding", "norm", "visibility"]


class InferenceModel(nn.Module):
    """The exported graph: images -> (embedding, norm, visibility map); no feature maps, no training branches."""

    def __init__(self, backbone: IResNet) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embedding, norm, visibility, _ = self.backbone(images, return_occlusion=True)
        return embedding, norm, visibility


def load_backbone_from_checkpoint(path: str | Path, trusted: bool = False) -> IResNet:
    """Rebuild the backbone of an OAML Lightning checkpoint (eval mode), safely unless ``trusted``.

    The checkpoint carries the backbone's config under ``checkpoint["oaml"]["backbone"]`` and its weights
    under ``state_dict`` keys prefixed ``backbone.``; both are required, and the weights load strictly. See
    ``oaml.training.checkpoint`` for what ``trusted`` allows.
    """
    checkpoint = load_checkpoint(path, trusted=trusted)
    backbone = build_part(checkpoint, "backbone", path, trusted=trusted)
    if not isinstance(backbone, IResNet):
        raise DataError(
            f"{path}: checkpoint['oaml']['backbone'] builds a {type(backbone).__name__}, not an IResNet"
        )
    state = {
        k[len(BACKBONE_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(BACKBONE_PREFIX)
    }
    if not state:
        raise DataError(f"{path}: no '{BACKBONE_PREFIX}*' keys in its state_dict")
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise DataError(
            f"{path}: the weights do not fit the configured backbone "
            f"{checkpoint['oaml']['backbone']}: {error}"
        ) from error
    return backbone.eval()


def default_output_path(ckpt: Path, fmt: str) -> Path:
    return ckpt.with_name(ckpt.stem + FORMATS[fmt])


def export_model(model: InferenceModel, fmt: str, out: Path, opset: int = 17) -> Path:
    """Write ``model`` (eval mode) to ``out`` as ONNX or TorchScript; refuses to overwrite ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if out.exists():
        raise ExistingPathError(
            f"{out} exists; refusing to overwrite it. Choose another out=PATH or remove it."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    size = model.backbone.input_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if fmt == "onnx":
            batch = {0: "batch"}
            with warnings.catch_warnings():
                # torch >= 2.9 marks the TorchScript-based exporter as deprecated; see the module docstring.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
                torch.onnx.export(
                    model,
                    (example,),
                    str(out),
                    dynamo=False,
                    opset_version=opset,
                    input_names=INPUT_NAMES,
                    output_names=OUTPUT_NAMES,
                    dynamic_axes={name: batch for name in INPUT_NAMES + OUTPUT_NAMES},
                )
        else:
            # check_trace re-runs the model to compare traces; there is no data-dependent control flow to
            # catch here, and the outputs are verified against eager PyTorch in tests/models/test_export.py.
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(out))
    return out


def export(cfg: DictConfig | dict[str, Any]) -> Path:
    """Load ``cfg.ckpt``, export it as ``cfg.format`` to ``cfg.out`` (or next to the checkpoint); return the path."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if "ckpt" not in cfg or OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        raise ConfigError("ckpt=PATH is required: the OAML Lightning checkpoint to export")
    fmt = str(cfg.get("format", "onnx"))
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    ckpt = Path(cfg.ckpt)
    out = Path(cfg.out) if cfg.get("out") else default_output_path(ckpt, fmt)
    if out.exists():  # checked before the (slow) load too
        raise ExistingPathError(
            f"{out} exists; refusing to overwrite it. Choose another out=PATH or remove it."
        )
    backbone = load_backbone_from_checkpoint(ckpt, trusted=bool(cfg.get("trusted", False)))
    written = export_model(InferenceModel(backbone), fmt, out, opset=int(cfg.get("opset", 17)))
    log.info("exported %s -> %s (%s)", ckpt, written, fmt)
    return written


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@report_user_errors  # bad config values and data files: one line, no traceback
def main(cfg: DictConfig) -> None:
    print(export(cfg))


if __name__ == "__main__":
    main()
