"""Run directories are write-once: a run never writes into a directory that already holds results.

One exception: a SLURM job that was requeued (preempted, out of time, ``scontrol requeue``) comes back into
the directory it claimed before, to resume it (``oaml.training.requeue``). A run under SLURM therefore marks
its directory with its job id (``JOB_MARKER``); the directory stays open to that job only, and to nobody else.

Two guards, because Hydra writes ``.hydra/`` (the run's config) before the task starts: a Hydra callback
stops the process before that write when ``hydra.run.dir`` (or ``hydra.sweep.dir``) points at an earlier
run, and ``claim_run_dir`` checks again from the task itself (also when it is called without the CLI).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from oaml.errors import ExistingPathError

RESULT_NAMES = ("metrics.json", "checkpoints", "tensorboard", "csv")
# Written by the run's first start under SLURM: the id of the job (array jobs: <array id>_<task id>).
JOB_MARKER = "slurm_job_id"


RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")


def _is_ddp_child() -> bool:
    """A process of rank > 0 (re-executed by Lightning's DDP launcher, exported by torchrun or submitit, or an
    srun task): it shares the directory rank 0 claimed, so it must not check it for results at the moment
    rank 0 starts writing them."""
    return any(int(os.environ.get(name, "0") or "0") > 0 for name in RANK_VARIABLES)


def slurm_job_key() -> str | None:
    """This SLURM job's id, stable across requeues (array tasks: ``<array job id>_<task id>``); None
    outside SLURM."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return os.environ.get("SLURM_JOB_ID") or None


def owned_by_this_job(run_dir: Path) -> bool:
    """True where ``run_dir`` was claimed by this very SLURM job before: it has been requeued."""
    key = slurm_job_key()
    marker = run_dir / JOB_MARKER
    return key is not None and marker.is_file() and marker.read_text().strip() == key


def _results_in(run_dir: Path) -> list[str]:
    if owned_by_this_job(run_dir):
        return []
    return [name for name in RESULT_NAMES if (run_dir / name).exists()]


def _refusal(run_dir: Path, taken: list[str]) -> str:
    return (
        f"run directory {run_dir} already holds results of an earlier run ({', '.join(taken)}); "
        "choose a new hydra.run.dir (to resume, keep the default and pass ckpt_path=<old>/checkpoints/last.ckpt)"
    )


def claim_run_dir(run_dir: Path) -> Path:
    """Return ``run_dir`` after checking that no earlier run left results in it."""
    if _is_ddp_child():
        return run_dir
    taken = _results_in(run_dir)
    if taken:
        raise ExistingPathError(_refusal(run_dir, taken))
    run_dir.mkdir(parents=True, exist_ok=True)
    key = slurm_job_key()
    if key is not None and not owned_by_this_job(run_dir):
        (run_dir / JOB_MARKER).write_text(key + "\n")
    return run_dir


class ProtectUsedRunDir(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml): exit before Hydra overwrites the
    ``.hydra/`` config of an earlier run. Exceptions raised in Hydra callbacks become warnings, so it exits."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_ddp_child():
            return
        run_dir = Path(config.hydra.run.dir)
        taken = _results_in(run_dir)
        if taken:
            sys.exit(_refusal(run_dir, taken))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_ddp_child():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        earlier = sweep_dir / "multirun.yaml"
        if earlier.exists() or any(_results_in(job) for job in sweep_dir.glob("*") if job.is_dir()):
            sys.exit(
                f"sweep directory {sweep_dir} already holds an earlier sweep; choose a new hydra.sweep.dir"
            )
