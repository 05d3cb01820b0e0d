"""Composition of the launcher options (conf/hydra/launcher/) and the named occlusion sweep (conf/sweep/)."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

OCCLUSION_WEIGHTS = [0.05, 0.1, 0.2, 0.4]
WEIGHTING_MODES = ["none", "product", "mask", "pooled", "covisible"]


def _compose(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_plain_multirun_keeps_hydras_basic_launcher() -> None:
    cfg = _compose()
    assert cfg.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert cfg.hydra.sweeper.params is None


@pytest.mark.parametrize(
    ("option", "launcher_class"), [("local", "LocalLauncher"), ("slurm", "SlurmLauncher")]
)
def test_launchers_follow_the_trainers_layout_and_keep_submitit_files_in_the_sweep(
    option: str, launcher_class: str, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = _compose(
            f"hydra/launcher={option}",
            "trainer.devices=4",
            "trainer.num_nodes=1" if option == "local" else "trainer.num_nodes=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        )
    # A file named like the plugin's own option would be merged into the plugin's schema, which Hydra
    # deprecates with a warning on every run.
    assert not [w for w in caught if "ConfigStore schema" in str(w.message)]
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4
    assert launcher.nodes == (1 if option == "local" else 2)
    assert launcher.submitit_folder == f"{tmp_path / 'sweep'}/.submitit/%j"
    assert launcher.timeout_min == 1440
    if option == "slurm":  # requeued after a time limit (up to 5 times), resuming its own run directory
        assert (launcher.max_num_timeout, launcher.signal_delay_s) == (5, 120)
    else:
        assert "max_num_timeout" not in launcher

    # The launcher Hydra builds from it receives the resolved numbers (what submitit passes to sbatch).
    built = instantiate(launcher)
    # (Hydra's plugin discovery imports the plugin module under its own name: compare class names.)
    assert type(built).__name__ == launcher_class
    assert built.params["tasks_per_node"] == 4
    assert built.params["nodes"] == launcher.nodes
    assert built.params["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"


def test_slurm_launcher_takes_the_cluster_keys() -> None:
    cfg = _compose(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj42",
        "hydra.launcher.qos=high",
        "hydra.launcher.cpus_per_task=10",
        "hydra.launcher.mem_gb=64",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.timeout_min=90",
        "hydra.launcher.tasks_per_node=4",
    )
    params = instantiate(cfg.hydra.launcher).params
    expected = {"partition": "gpu", "account": "proj42", "qos": "high", "cpus_per_task": 10, "mem_gb": 64}
    expected |= {"gpus_per_node": 4, "timeout_min": 90, "tasks_per_node": 4, "nodes": 1}
    assert {key: params[key] for key in expected} == expected


def _sweep_jobs(cfg: DictConfig, command_line: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes from the config's sweeper params and the command line."""
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()] + command_line
    overrides = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def test_occlusion_sweep_is_every_weight_with_every_weighting_mode() -> None:
    cfg = _compose("+sweep=occlusion")
    assert cfg.hydra.sweep.dir.startswith("multirun/occlusion/")
    jobs = _sweep_jobs(cfg, [])
    assert len(jobs) == len(OCCLUSION_WEIGHTS) * len(WEIGHTING_MODES) == 20
    expected = {
        (f"loss.occlusion={w}", f"occlusion.weighting={m}")
        for w, m in itertools.product(OCCLUSION_WEIGHTS, WEIGHTING_MODES)
    }
    assert {tuple(job) for job in jobs} == expected

    # Each job's composed config: the loss weight, and the matcher reading the job's weighting mode.
    for job in (jobs[0], jobs[-1]):
        job_cfg = _compose("+sweep=occlusion", *job)
        weight = float(job[0].split("=")[1])
        mode = job[1].split("=")[1]
        assert job_cfg.loss.occlusion == weight
        assert job_cfg.occlusion.weighting == mode
        assert OmegaConf.to_container(job_cfg.matcher, resolve=True)["weighting"] == mode


def test_occlusion_sweep_values_on_the_command_line_replace_the_configs() -> None:
    cfg = _compose("+sweep=occlusion")
    jobs = _sweep_jobs(cfg, ["loss.occlusion=0.05,0.3", "occlusion.weighting=product", "seed=1,2"])
    assert len(jobs) == 4
    assert {job[0] for job in jobs} == {"loss.occlusion=0.05", "loss.occlusion=0.3"}
    assert {job[1] for job in jobs} == {"occlusion.weighting=product"}
