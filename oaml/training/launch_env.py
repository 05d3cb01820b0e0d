"""Which process is which rank: agree with the launcher that started this training process, before Lightning.

Lightning's ``ddp`` strategy normally starts the other ranks itself by re-executing ``sys.argv``. That is
right for a single run (``python -m oaml.train trainer=ddp_cpu``) and wrong everywhere else:

- in a Hydra multirun under the basic launcher, ``sys.argv`` is the whole sweep, so every extra rank would
  replay the sweep instead of joining this job: refused here, with the fix;
- under submitit's local executor (``hydra/launcher=local``), submitit already started ``tasks_per_node``
  processes; exporting torch's ``env://`` variables (submitit's ``TorchDistributedEnvironment``) makes
  Lightning's ``LightningEnvironment`` adopt them instead of starting more;
- under SLURM (``hydra/launcher=slurm``), srun started one task per device on every node and Lightning's
  ``SLURMEnvironment`` reads the ranks from ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NODEID``.

Under both submitit executors the tasks the job really has (submitit's ``JobEnvironment``, not the config,
which a sweep may have changed after the launcher read it) must match ``trainer.devices`` per node and
``trainer.num_nodes``; otherwise each task would train alone as a world of one, or wait forever for ranks
that never start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from oaml.errors import ConfigError

# Strategies whose launcher starts the other ranks from inside this process (torch.multiprocessing);
# every other multi-process strategy (ddp, fsdp, deepspeed, auto with several devices) re-executes sys.argv.
SELF_SPAWNING_WORDS = ("spawn", "fork", "notebook")
SUBMITIT_EXECUTORS = ("local", "slurm")
# Lightning's SLURMEnvironment stands aside for jobs with these names (interactive allocations).
SLURM_NAMES_LIGHTNING_IGNORES = ("bash", "interactive")


@dataclass(frozen=True)
class ProcessLayout:
    """The processes a trainer config asks for: ``devices_per_node`` ranks on each of ``num_nodes`` nodes."""

    devices_per_node: int
    num_nodes: int
    strategy: str
    spawns_itself: bool

    @property
    def world_size(self) -> int:
        return self.devices_per_node * self.num_nodes


def _count_devices(devices: Any, accelerator: str) -> int:
    """``trainer.devices`` as a number of processes per node, as Lightning counts it."""
    uses_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if devices == "auto":
        return max(torch.cuda.device_count(), 1) if uses_cuda else 1
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:  # "0,1" or "0,": explicit device indices
            return len([d for d in text.split(",") if d.strip()])
        devices = int(text) if text.lstrip("-").isdigit() else devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if devices == -1 and uses_cuda:
        return torch.cuda.device_count()
    raise ConfigError(
        f"trainer.devices={devices!r} with trainer.accelerator={accelerator!r} names no process count; "
        "use a positive number (trainer.devices=2), a list of device indices, or 'auto'"
    )


def _strategy_name(strategy: Any) -> tuple[str, bool]:
    """The strategy's name and whether its launcher spawns the ranks itself (no re-execution of sys.argv)."""
    if isinstance(strategy, Mapping):
        name = str(strategy.get("_target_", "custom strategy"))
        start_method = strategy.get("start_method")
        return name, start_method in ("spawn", "fork", "forkserver")
    name = str(strategy)
    return name, any(word in name.lower() for word in SELF_SPAWNING_WORDS)


def process_layout(trainer_cfg: Mapping[str, Any]) -> ProcessLayout:
    """Read the process layout from the ``trainer`` config (a ``lightning.pytorch.Trainer``'s arguments)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    strategy, spawns_itself = _strategy_name(trainer_cfg.get("strategy", "auto"))
    num_nodes = int(trainer_cfg.get("num_nodes", 1))
    if num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes={num_nodes} must be at least 1")
    return ProcessLayout(
        devices_per_node=_count_devices(trainer_cfg.get("devices", "auto"), accelerator),
        num_nodes=num_nodes,
        strategy=strategy,
        spawns_itself=spawns_itself,
    )


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _ranks_started_externally() -> bool:
    """True where a launcher outside Lightning already started every rank (torchrun, srun, an export)."""
    if "LOCAL_RANK" in os.environ:
        return True
    return (
        "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in SLURM_NAMES_LIGHTNING_IGNORES
    )


def _check_submitit_tasks(layout: ProcessLayout, executor: str, tasks_per_node: int, nodes: int) -> None:
    """The job's real tasks must be the trainer's processes: one per device, on as many nodes."""
    launcher = f"hydra/launcher={executor}"
    if nodes != layout.num_nodes:
        raise ConfigError(
            f"this {launcher} job runs on {nodes} node(s) but trainer.num_nodes={layout.num_nodes}: "
            "set hydra.launcher.nodes and trainer.num_nodes to the same number (the launcher configs default "
            "to hydra.launcher.nodes=${trainer.num_nodes})"
        )
    if layout.spawns_itself and layout.world_size > 1:
        if tasks_per_node != 1:
            raise ConfigError(
                f"trainer.strategy={layout.strategy} starts its own {layout.devices_per_node} processes, but this "
                f"{launcher} job already has hydra.launcher.tasks_per_node={tasks_per_node}: set "
                "hydra.launcher.tasks_per_node=1, or use trainer.strategy=ddp with one task per device"
            )
        return
    if tasks_per_node != layout.devices_per_node:
        raise ConfigError(
            f"this {launcher} job has hydra.launcher.tasks_per_node={tasks_per_node} but the trainer expects "
            f"{layout.devices_per_node} process(es) per node (trainer.devices="
            f"{layout.devices_per_node}, trainer.strategy={layout.strategy}): each task must be one device's "
            "rank, so set hydra.launcher.tasks_per_node to trainer.devices (the default, "
            "${trainer.devices}, follows the base config but not a trainer.devices swept per job)"
        )


def prepare_launch(cfg: DictConfig) -> ProcessLayout:
    """Check that the processes started by the launcher are the ones ``cfg.trainer`` expects, and export what
    Lightning needs to adopt them. Call it first in ``train()``/``evaluate()``, before the Trainer exists.

    Raises ``ValueError`` (naming the keys and the fix) for a layout that would run the wrong processes.
    """
    layout = process_layout(cfg.trainer)
    executor = os.environ.get("SUBMITIT_EXECUTOR", "")
    if executor in SUBMITIT_EXECUTORS:
        import submitit  # a dependency of the submitit launchers only

        job = submitit.JobEnvironment()
        _check_submitit_tasks(layout, executor, job.num_tasks // job.num_nodes, job.num_nodes)
        job_name = os.environ.get("SLURM_JOB_NAME")
        if executor == "slurm" and job.num_tasks > 1 and job_name in SLURM_NAMES_LIGHTNING_IGNORES:
            raise ConfigError(
                f"hydra.launcher.name={job_name} makes Lightning ignore SLURM (it reserves the job names "
                f"{SLURM_NAMES_LIGHTNING_IGNORES} for interactive sessions), so it would not read the ranks "
                "of this job's tasks: choose another hydra.launcher.name"
            )
        if executor == "local" and job.num_tasks > 1:
            # Every rank sees every device (Lightning selects its own by LOCAL_RANK), as under SLURM.
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        return layout
    if (
        _is_multirun()
        and layout.world_size > 1
        and not layout.spawns_itself
        and not _ranks_started_externally()
    ):
        raise ConfigError(
            f"trainer.strategy={layout.strategy} with trainer.devices={layout.devices_per_node} and "
            f"trainer.num_nodes={layout.num_nodes} in a Hydra multirun under an in-process launcher "
            f"(hydra/launcher={_launcher_choice()}): Lightning would start the other ranks by re-running this "
            "command line, which replays the whole sweep. Use hydra/launcher=local (one process per device per "
            "job; hydra.launcher.tasks_per_node follows trainer.devices) or hydra/launcher=slurm, or "
            "trainer.strategy=ddp_spawn, or drop -m for a single run"
        )
    return layout


def _launcher_choice() -> str:
    if not HydraConfig.initialized():
        return "none"
    return str(HydraConfig.get().runtime.choices.get("hydra/launcher", "basic"))
