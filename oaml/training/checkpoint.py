"""Reading OAML training checkpoints safely: a checkpoint is a file from somewhere.

Two things in a checkpoint can run code: pickle, and the Hydra ``_target_`` of the model configs it carries
(``checkpoint["oaml"]["backbone" | "head" | "matcher"]``). Unless the caller says the file is trusted, it is
unpickled with ``weights_only=True``, and each part is built by calling an allow-listed OAML class directly
with the config's plain arguments, never through Hydra's (recursive) instantiation.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from oaml.errors import DataError, MissingFileError
from oaml.models import AdaFace, ArcFace, CosFace, IResNet, QAConv, build_backbone

SAFE_TARGETS: dict[str, dict[str, Callable[..., Any]]] = {
    "backbone": {
        "oaml.models.build_backbone": build_backbone,
        "oaml.models.iresnet.build_backbone": build_backbone,
        "oaml.models.IResNet": IResNet,
        "oaml.models.iresnet.IResNet": IResNet,
    },
    "head": {
        f"oaml.models{module}.{cls.__name__}": cls
        for cls in (AdaFace, ArcFace, CosFace)
        for module in ("", ".margin_heads")
    },
    "matcher": {"oaml.models.QAConv": QAConv, "oaml.models.qaconv.QAConv": QAConv},
}


def load_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """The checkpoint dict (with a ``state_dict``); only tensors and plain containers unless ``trusted``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"checkpoint {path} does not exist (give ckpt=<run dir>/checkpoints/last.ckpt)"
        )
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since torch 1.6 (Lightning checkpoints, AdaFace's releases).
        raise DataError(
            f"{path} is not a PyTorch checkpoint (not the zip archive torch.save writes): a truncated download or "
            "another kind of file? Give ckpt=<run dir>/checkpoints/last.ckpt"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        if not isinstance(error, pickle.UnpicklingError) or trusted:
            raise DataError(
                f"{path} cannot be read as a PyTorch checkpoint: {str(error).splitlines()[0]}"
            ) from error
        raise DataError(
            f"{path} holds objects that safe loading refuses; if you trust this file, rerun with trusted=true "
            f"({str(error).splitlines()[0]})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(f"{path} is not a Lightning checkpoint: no 'state_dict' entry")
    return checkpoint


def build_part(
    checkpoint: Mapping[str, Any], part: str, source: str | Path, trusted: bool = False, **derived: Any
) -> Any:
    """Build ``checkpoint["oaml"][part]`` (``backbone``, ``head`` or ``matcher``) with ``derived`` arguments
    added (the sizes that depend on other parts)."""
    where = f"checkpoint['oaml']['{part}']"
    cfg = (checkpoint.get("oaml") or {}).get(part)
    if not cfg or "_target_" not in cfg:
        raise DataError(
            f"{source} lacks {where} (the {part}'s config with a _target_): was it written by oaml.train? "
            "(AdaFace .ckpt files are imported with oaml.models.load_adaface_checkpoint)"
        )
    if trusted:
        return instantiate(OmegaConf.create(dict(cfg)), **derived)
    cfg = dict(cfg)
    target = cfg.pop("_target_")
    allowed = SAFE_TARGETS[part]
    if target not in allowed:
        raise DataError(
            f"{source}: {where}['_target_'] = {target!r} is not an OAML {part} (allowed: {', '.join(allowed)}); "
            "refusing to run it. Pass trusted=true only for files you trust."
        )
    special = sorted(k for k in map(str, cfg) if k.startswith("_") and k.endswith("_"))
    nested = _nested_targets(cfg, where)
    if special or nested:
        raise DataError(
            f"{source}: {where} may hold only plain arguments of {target}, found "
            f"{', '.join(special + [n + '._target_' for n in nested])}; refusing to instantiate it. "
            "Pass trusted=true only for files you trust."
        )
    try:
        return allowed[target](**cfg, **derived)
    except TypeError as error:
        raise DataError(f"{source}: {where} does not fit {target}: {error}") from error


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
