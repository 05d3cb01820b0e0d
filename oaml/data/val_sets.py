"""Which verification sets a run validates on: the configured ``val.sets``, or one file given on the
command line (``val.pairs=FILE`` or ``val.bin=FILE``) together with its occluded twin."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from torch.utils.data import Dataset

from oaml.data.occluded_pairs import OccludedPairs
from oaml.data.verification import BinVerificationDataset, PairListDataset


def build_val_sets(val_cfg: Mapping[str, Any], seed: int = 0, image_size: int = 112) -> dict[str, Dataset]:
    pairs, bin_file = val_cfg.get("pairs"), val_cfg.get("bin")
    if pairs and bin_file:
        raise ValueError("give either val.pairs or val.bin, not both")
    if not (pairs or bin_file):
        sets = instantiate(val_cfg.get("sets")) or {}
        return dict(sets)
    if pairs:
        clean = PairListDataset(pairs, image_size=image_size)
    else:
        clean = BinVerificationDataset(bin_file, image_size, cache_dir=val_cfg.get("cache_dir"))
    name = Path(pairs or bin_file).stem
    return {name: clean, f"{name}_occluded": OccludedPairs(clean, seed=seed)}


def resolve_monitor(monitor: str | None, val_set_names: list[str]) -> str | None:
    """The metric that picks best.ckpt: ``val.monitor``, or (null) the fused accuracy of the first set.

    Checked before training starts: a monitor that names no validation set would otherwise fail at the
    first validation, after an epoch of work and before any checkpoint is written.
    """
    if not val_set_names:
        return None
    if monitor is None:
        return f"val/{val_set_names[0]}/fused_acc"
    parts = monitor.split("/")
    if len(parts) != 3 or parts[0] != "val" or parts[1] not in val_set_names:
        raise ValueError(
            f"val.monitor={monitor!r} names no validation set of this run ({val_set_names}); "
            f"use e.g. val.monitor=val/{val_set_names[0]}/fused_acc, or val.monitor=null for that default"
        )
    return monitor
