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
import pickle
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from oaml.models.iresnet import IResNet, build_backbone
from oaml.paths import CONF_DIR

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
BACKBONE_PREFIX = "backbone."
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["embedding", "norm", "visibility"]
# The only ``_target_`` an untrusted checkpoint's backbone config may name: a checkpoint is a file from
# somewhere, and instantiating an arbitrary ``_target_`` runs arbitrary code (``pathlib.Path.touch``, ...).
SAFE_BACKBONE_TARGETS: dict[str, Any] = {
    "oaml.models.build_backbone": build_backbone,
    "oaml.models.iresnet.build_backbone": build_backbone,
    "oaml.models.IResNet": IResNet,
    "oaml.models.iresnet.IResNet": IResNet,
}


class InferenceModel(nn.Module):
    """The exported graph: images -> (embedding, norm, visibility map); no feature maps, no training branches."""

    def __init__(self, backbone: IResNet) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        embedding, norm, visibility, _ = self.backbone(images, return_occlusion=True)
        return embedding, norm, visibility


def load_backbone_from_checkpoint(path: str | Path, trusted: bool = False) -> IResNet:
    """Rebuild the backbone of an OAML Lightning checkpoint (eval mode).

    The checkpoint carries the backbone's Hydra config under ``checkpoint["oaml"]["backbone"]`` and its
    weights under ``state_dict`` keys prefixed ``backbone.``; both are required, and the weights load strictly.
    Unless ``trusted``, the config's ``_target_`` must be one of ``SAFE_BACKBONE_TARGETS`` and the other
    entries plain constructor arguments: the builder is called directly, without Hydra's instantiation, so
    a crafted config cannot run other code. ``trusted=True`` allows full unpickling and any ``_target_``
    (only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds objects that safe loading refuses; if you trust this file, rerun with trusted=true "
            f"({str(error).splitlines()[0]})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint: no 'state_dict' entry")
    backbone_cfg = (checkpoint.get("oaml") or {}).get("backbone")
    if not backbone_cfg or "_target_" not in backbone_cfg:
        raise ValueError(
            f"{path} lacks checkpoint['oaml']['backbone'] (the backbone's Hydra config with a _target_): "
            "was it written by oaml.train?"
        )
    if trusted:
        backbone = hydra.utils.instantiate(OmegaConf.create(dict(backbone_cfg)))
    else:
        backbone = _build_safe_backbone(path, dict(backbone_cfg))
    if not isinstance(backbone, IResNet):
        raise ValueError(
            f"{path}: checkpoint['oaml']['backbone'] builds a {type(backbone).__name__}, not an IResNet"
        )
    state = {
        k[len(BACKBONE_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(BACKBONE_PREFIX)
    }
    if not state:
        raise ValueError(f"{path}: no '{BACKBONE_PREFIX}*' keys in its state_dict")
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: the weights do not fit the configured backbone {backbone_cfg}: {error}"
        ) from error
    return backbone.eval()


def _nested_targets(value: Any, where: str) -> list[str]:
    """Paths of every ``_target_`` key inside ``value`` (nested dicts and lists)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_target_":
                found.append(where)
            found += _nested_targets(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += _nested_targets(item, f"{where}[{index}]")
    return found


def _build_safe_backbone(path: Path, cfg: dict[str, Any]) -> Any:
    """Call an allow-listed backbone builder with the config's plain arguments (see SAFE_BACKBONE_TARGETS)."""
    key = "checkpoint['oaml']['backbone']['_target_']"
    target = cfg.pop("_target_")
    if target not in SAFE_BACKBONE_TARGETS:
        raise ValueError(
            f"{path}: {key} = {target!r} is not an OAML backbone builder (allowed: "
            f"{', '.join(SAFE_BACKBONE_TARGETS)}); refusing to run it. "
            "Pass trusted=true only for files you trust."
        )
    special = sorted(k for k in map(str, cfg) if k.startswith("_") and k.endswith("_"))
    nested = _nested_targets(cfg, "checkpoint['oaml']['backbone']")
    if special or nested:
        raise ValueError(
            f"{path}: checkpoint['oaml']['backbone'] may hold only plain arguments of {target}, found "
            f"{', '.join(special + [n + '._target_' for n in nested])}; refusing to instantiate it. "
            "Pass trusted=true only for files you trust."
        )
    try:
        return SAFE_BACKBONE_TARGETS[target](**cfg)
    except TypeError as error:
        raise ValueError(f"{path}: checkpoint['oaml']['backbone'] does not fit {target}: {error}") from error


def default_output_path(ckpt: Path, fmt: str) -> Path:
    return ckpt.with_name(ckpt.stem + FORMATS[fmt])


def export_model(model: InferenceModel, fmt: str, out: Path, opset: int = 17) -> Path:
    """Write ``model`` (eval mode) to ``out`` as ONNX or TorchScript; refuses to overwrite ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if out.exists():
        raise FileExistsError(
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
        raise ValueError("ckpt=PATH is required: the OAML Lightning checkpoint to export")
    fmt = str(cfg.get("format", "onnx"))
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    ckpt = Path(cfg.ckpt)
    out = Path(cfg.out) if cfg.get("out") else default_output_path(ckpt, fmt)
    if out.exists():  # checked before the (slow) load too
        raise FileExistsError(
            f"{out} exists; refusing to overwrite it. Choose another out=PATH or remove it."
        )
    backbone = load_backbone_from_checkpoint(ckpt, trusted=bool(cfg.get("trusted", False)))
    written = export_model(InferenceModel(backbone), fmt, out, opset=int(cfg.get("opset", 17)))
    log.info("exported %s -> %s (%s)", ckpt, written, fmt)
    return written


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    print(export(cfg))


if __name__ == "__main__":
    main()
