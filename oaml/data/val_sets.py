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
    clean = (
        PairListDataset(pairs, image_size=image_size)
        if pairs
        else BinVerificationDataset(bin_file, image_size)
    )
    name = Path(pairs or bin_file).stem
    return {name: clean, f"{name}_occluded": OccludedPairs(clean, seed=seed)}
