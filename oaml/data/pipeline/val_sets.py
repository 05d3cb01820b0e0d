"""Which sets a run validates on: the verification sets (the configured ``val.sets``, or one file given on
the command line, ``val.pairs=FILE`` or ``val.bin=FILE``, together with its occluded twin) and the mask sets
(``val.mask_sets``: held-out faces with true visibility masks, which score the OcclusionHead only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from torch.utils.data import Dataset

from oaml.data.formats.verification import BinVerificationDataset, PairListDataset
from oaml.data.pipeline.occluded_pairs import OccludedPairs
from oaml.errors import ConfigError

# Keys of ``val`` that define how the occluded twin of a verification file is drawn, with their defaults. The one
# home of these defaults: training stores the values in force in its checkpoints (``oaml.training.build``), so
# ``python -m oaml.evaluate`` scores the same twins unless told otherwise.
VAL_PROTOCOL_DEFAULTS: dict[str, Any] = {"occluder_match_grayscale": False}


def build_val_sets(val_cfg: Mapping[str, Any], seed: int = 0, image_size: int = 112) -> dict[str, Dataset]:
    pairs, bin_file = val_cfg.get("pairs"), val_cfg.get("bin")
    if pairs and bin_file:
        raise ConfigError("give either val.pairs or val.bin, not both")
    if not (pairs or bin_file):
        sets = instantiate(val_cfg.get("sets")) or {}
        return dict(sets)
    if pairs:
        clean = PairListDataset(pairs, image_size=image_size)
    else:
        clean = BinVerificationDataset(bin_file, image_size, cache_dir=val_cfg.get("cache_dir"))
    name = Path(pairs or bin_file).stem
    match_grayscale = val_protocol(val_cfg)["occluder_match_grayscale"]
    return {name: clean, f"{name}_occluded": OccludedPairs(clean, seed=seed, match_grayscale=match_grayscale)}


def val_protocol(val_cfg: Mapping[str, Any]) -> dict[str, bool]:
    """The occluded-twin protocol in force for a ``val`` config: each key's value, its default where unset or null."""
    values = {key: val_cfg.get(key) for key in VAL_PROTOCOL_DEFAULTS}
    return {key: bool(VAL_PROTOCOL_DEFAULTS[key] if v is None else v) for key, v in values.items()}


def build_mask_val_sets(val_cfg: Mapping[str, Any]) -> dict[str, Dataset]:
    """``val.mask_sets``, instantiated (e.g. the niqab set's held-out split when ``masks=niqab``)."""
    return dict(instantiate(val_cfg.get("mask_sets")) or {})


def resolve_monitor(
    monitor: str | None, val_set_names: list[str], mask_val_set_names: list[str] = ()
) -> str | None:
    """The metric that picks best.ckpt: ``val.monitor``, or (null) the fused accuracy of the first
    verification set (the hidden-region IoU of the first mask set when there is no verification set).

    Checked before training starts: a monitor that names no validation set would otherwise fail at the
    first validation, after an epoch of work and before any checkpoint is written.
    """
    pair_names = [name for name in val_set_names if name not in mask_val_set_names]
    if pair_names:
        default = f"val/{pair_names[0]}/fused_acc"
    elif mask_val_set_names:
        default = f"val/{mask_val_set_names[0]}/occ_iou"
    else:
        return None
    if monitor is None:
        return default
    parts = monitor.split("/")
    if len(parts) != 3 or parts[0] != "val" or parts[1] not in val_set_names:
        raise ConfigError(
            f"val.monitor={monitor!r} names no validation set of this run ({list(val_set_names)}); "
            f"use e.g. val.monitor={default}, or val.monitor=null for that default"
        )
    return monitor
