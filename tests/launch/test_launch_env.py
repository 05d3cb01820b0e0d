"""oaml.training.launch_env in-process: the process layout a trainer config asks for, what each launcher's
task exports for Lightning, and the layouts it refuses.

A submitit task is recognised by the variables submitit itself sets (SUBMITIT_EXECUTOR and the executor's
own rank variables); here they are set by hand, and submitit's real JobEnvironment reads them. The real
launchers run in test_submitit_local.py and test_slurm_launcher.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
from conftest import compose_train_config
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf, open_dict

from oaml.training.launch_env import ProcessLayout, prepare_launch, process_layout

TORCH_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
LAUNCHER_VARS = ("SUBMITIT_EXECUTOR", "SLURM_NTASKS", "SLURM_JOB_NAME", "NODE_RANK", "GROUP_RANK")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No launcher or torch.distributed variables; whatever prepare_launch exports is removed afterwards.

    A Trainer built under an exported rank also sets Lightning's process-global ``rank_zero_only.rank``;
    it is restored too, or every later test in this process would log nothing (loggers write on rank 0 only).
    """
    for name in (*TORCH_DIST_VARS, *LAUNCHER_VARS):
        monkeypatch.setenv(name, "unset")  # records the original state, restored at teardown
        monkeypatch.delenv(name)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    return monkeypatch


def _local_task(monkeypatch: pytest.MonkeyPatch, tasks: int, rank: int, job_id: str = "4242") -> None:
    """The variables submitit's local executor gives task ``rank`` of a ``tasks``-task job."""
    for name, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": job_id,
        "SUBMITIT_LOCAL_NTASKS": str(tasks),
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": str(rank),
        "SUBMITIT_LOCAL_LOCALID": str(rank),
    }.items():
        monkeypatch.setenv(name, value)


def _slurm_task(
    monkeypatch: pytest.MonkeyPatch, nodes: int, tasks_per_node: int, job_name: str = "train"
) -> None:
    """The variables of task 0 of a SLURM job started by submitit's sbatch script and srun."""
    for name, value in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NAME": job_name,
        "SLURM_NTASKS": str(nodes * tasks_per_node),
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": f"gpu[1-{nodes}]" if nodes > 1 else "gpu1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }.items():
        monkeypatch.setenv(name, value)


def _config(tmp_path: Path, *overrides: str, multirun: bool = False):
    cfg = compose_train_config(tmp_path / "run", overrides)
    if multirun:
        hydra_cfg = HydraConfig.get()
        with open_dict(cfg):
            cfg.hydra = OmegaConf.merge(hydra_cfg, {"mode": "MULTIRUN"})
        HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, ProcessLayout(2, 1, "ddp", False)),
        ({"accelerator": "cpu", "devices": "3", "num_nodes": 2}, ProcessLayout(3, 2, "auto", False)),
        ({"accelerator": "cpu", "devices": "auto", "strategy": "auto"}, ProcessLayout(1, 1, "auto", False)),
        (
            {"accelerator": "gpu", "devices": [0, 3], "strategy": "ddp_spawn"},
            ProcessLayout(2, 1, "ddp_spawn", True),
        ),
        (
            {"accelerator": "gpu", "devices": "0,1,", "strategy": "ddp_fork"},
            ProcessLayout(2, 1, "ddp_fork", True),
        ),
        (
            {
                "devices": 4,
                "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"},
            },
            ProcessLayout(4, 1, "lightning.pytorch.strategies.DDPStrategy", True),
        ),
        (
            {"devices": 4, "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"}},
            ProcessLayout(4, 1, "lightning.pytorch.strategies.DDPStrategy", False),
        ),
    ],
)
def test_process_layout_counts_devices_as_lightning_does(trainer: dict, expected: ProcessLayout) -> None:
    layout = process_layout(trainer)
    assert layout == expected
    assert layout.world_size == expected.devices_per_node * expected.num_nodes


@pytest.mark.parametrize(
    "trainer",
    [
        {"accelerator": "cpu", "devices": 0},
        {"accelerator": "cpu", "devices": -1},
        {"accelerator": "cpu", "devices": "many"},
        {"accelerator": "cpu", "devices": 1, "num_nodes": 0},
    ],
)
def test_process_layout_rejects_counts_that_name_no_processes(trainer: dict) -> None:
    with pytest.raises(ValueError, match=r"trainer\.(devices|num_nodes)"):
        process_layout(trainer)


def test_local_task_exports_its_rank_so_lightning_adopts_it(clean_env, tmp_path: Path) -> None:
    _local_task(clean_env, tasks=2, rank=1)
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cfg = _config(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    prepare_launch(cfg)

    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("1", "1", "2")
    port = int(os.environ["MASTER_PORT"])
    assert 20000 <= port <= 60000 and os.environ["MASTER_ADDR"]
    # Every device stays visible to every rank (Lightning picks its own by local rank, as under SLURM).
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"

    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False
    )
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, LightningEnvironment)
    # Lightning's ddp launcher re-executes sys.argv only when the processes were not created externally.
    assert environment.creates_processes_externally
    assert (trainer.global_rank, trainer.local_rank, trainer.world_size) == (1, 1, 2)

    # Rank 0 of the same job meets rank 1 at the same address and port.
    for name in TORCH_DIST_VARS:
        os.environ.pop(name, None)
    _local_task(clean_env, tasks=2, rank=0)
    prepare_launch(cfg)
    assert int(os.environ["MASTER_PORT"]) == port and os.environ["RANK"] == "0"


def test_one_task_job_exports_nothing(clean_env, tmp_path: Path) -> None:
    _local_task(clean_env, tasks=1, rank=0)
    layout = prepare_launch(_config(tmp_path))
    assert layout == ProcessLayout(1, 1, "auto", False)
    assert not any(name in os.environ for name in TORCH_DIST_VARS)


@pytest.mark.parametrize(
    ("tasks", "overrides", "message"),
    [
        # Two tasks but one device each: two separate worlds of one, each training alone.
        (2, ["trainer.devices=1"], r"tasks_per_node=2 .*\(trainer\.devices=1,"),
        # One task but two devices with ddp: Lightning would re-execute submitit's own command line.
        (1, ["trainer.devices=2", "trainer.strategy=ddp"], r"tasks_per_node=1 .*\(trainer\.devices=2,"),
        # ddp_spawn starts its own processes: two tasks would each spawn two.
        (
            2,
            ["trainer.devices=2", "trainer.strategy=ddp_spawn"],
            r"starts its own 2 processes.*tasks_per_node=1",
        ),
    ],
)
def test_local_task_refuses_tasks_that_are_not_the_trainers_ranks(
    clean_env, tmp_path: Path, tasks: int, overrides: list[str], message: str
) -> None:
    _local_task(clean_env, tasks=tasks, rank=0)
    cfg = _config(tmp_path, "trainer.accelerator=cpu", *overrides)
    with pytest.raises(ValueError, match=message):
        prepare_launch(cfg)
    assert "RANK" not in os.environ


def test_local_task_with_a_self_spawning_strategy_runs_as_one_task(clean_env, tmp_path: Path) -> None:
    _local_task(clean_env, tasks=1, rank=0)
    cfg = _config(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn")
    assert prepare_launch(cfg).spawns_itself
    assert "RANK" not in os.environ


def test_slurm_task_needs_as_many_nodes_as_the_trainer(clean_env, tmp_path: Path) -> None:
    _slurm_task(clean_env, nodes=2, tasks_per_node=2)
    single_node = _config(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    with pytest.raises(ValueError, match=r"2 node\(s\) but trainer\.num_nodes=1.*hydra\.launcher\.nodes"):
        prepare_launch(single_node)

    two_nodes = _config(
        tmp_path,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.num_nodes=2",
    )
    assert prepare_launch(two_nodes).world_size == 4
    # Lightning's SLURMEnvironment reads the ranks from SLURM: nothing is exported.
    assert not any(name in os.environ for name in TORCH_DIST_VARS)


def test_slurm_task_refuses_tasks_per_node_other_than_devices(clean_env, tmp_path: Path) -> None:
    _slurm_task(clean_env, nodes=1, tasks_per_node=4)
    cfg = _config(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    with pytest.raises(ValueError, match=r"hydra/launcher=slurm job has hydra\.launcher\.tasks_per_node=4"):
        prepare_launch(cfg)


def test_slurm_job_named_like_an_interactive_session_is_refused(clean_env, tmp_path: Path) -> None:
    _slurm_task(clean_env, nodes=1, tasks_per_node=2, job_name="interactive")
    cfg = _config(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    with pytest.raises(ValueError, match=r"hydra\.launcher\.name=interactive makes Lightning ignore SLURM"):
        prepare_launch(cfg)


def test_basic_multirun_refuses_ddp_that_would_replay_the_sweep(clean_env, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "trainer=ddp_cpu", multirun=True)
    with pytest.raises(
        ValueError, match=r"replays the whole sweep.*hydra/launcher=local.*ddp_spawn"
    ) as error:
        prepare_launch(cfg)
    assert "trainer.strategy=ddp with trainer.devices=2" in str(error.value)
    assert "hydra/launcher=basic" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "multirun", "env"),
    [
        (["trainer=ddp_cpu"], False, {}),  # a single run: Lightning's re-execution is the right launcher
        (["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"], True, {}),  # spawned in-process
        (["trainer.devices=1"], True, {}),  # one process: nothing to start
        (["trainer=ddp_cpu"], True, {"LOCAL_RANK": "0"}),  # torchrun started every rank already
    ],
)
def test_layouts_that_start_the_right_processes_pass(
    clean_env, tmp_path: Path, overrides: list[str], multirun: bool, env: dict[str, str]
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    prepare_launch(_config(tmp_path, *overrides, multirun=multirun))
    assert "RANK" not in os.environ
