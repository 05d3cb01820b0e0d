"""Shared test fixtures: the real training entry point on tiny settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import oaml.paths

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = Path(oaml.paths.CONF_DIR)

# A few steps on a dozen synthetic identities: seconds on 2 CPU cores, every branch and metric exercised.
SYNTHETIC_TINY = [
    "data.train.num_identities=12",
    "data.train.images_per_identity=4",
    "val.sets.synthetic.num_pairs=40",
    "val.sets.synthetic.num_identities=16",
    "val.sets.synthetic_occluded.num_pairs=40",
    "val.sets.synthetic_occluded.num_identities=16",
]
LOOP_TINY = [
    "data.batch_size=16",
    "data.num_workers=0",
    "data.val_batch_size=40",
    "trainer.max_epochs=1",
    "trainer.max_steps=3",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
]
TINY_OVERRIDES = SYNTHETIC_TINY + LOOP_TINY

torch.set_num_threads(min(2, os.cpu_count() or 1))


def compose_train_config(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m oaml.train` would run, with Hydra's runtime output dir set to ``run_dir``.

    The synthetic-data sizes apply only while the synthetic data is selected (``data=...`` or an experiment
    replaces it).
    """
    base = LOOP_TINY if any(o.startswith(("data=", "experiment=")) for o in overrides) else TINY_OVERRIDES
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*base, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def compose_evaluate_config(ckpt: Path, run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m oaml.evaluate ckpt=...` would run, with its output dir set to ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="evaluate", overrides=[f"ckpt={ckpt}", *overrides], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def tiny_train_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_train_config(run_dir or tmp_path / "run", overrides)

    return make
