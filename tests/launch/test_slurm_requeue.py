"""Requeued SLURM jobs continue their run, on a real one-node SLURM cluster (slurm_cluster.py): a running job
requeued with ``scontrol requeue``, and a job whose ``--time`` runs out (submitit's warning signal, then its
requeue). Each first start is held after its first epoch (requeue_probe.py), as a long training would still be
running; both runs must end with one ``metrics.json`` equal to an uninterrupted run's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES
from launch_cli import read_json, run_train, start_train, submitit_logs
from slurm_cluster import slurm_cluster  # noqa: F401  (the cluster fixture)

# 3 epochs of 3 steps, validated after each.
RUN = [*TINY_OVERRIDES, "trainer.max_epochs=3", "trainer.max_steps=-1", "print_metrics=false"]
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1"]
PROBE = [
    "+callbacks.requeue_probe._target_=requeue_probe.HoldFirstStart",
    "+callbacks.requeue_probe.out_dir=${hydra:runtime.output_dir}",
]


def _wait_for(path: Path, timeout: float, proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {what} ({path}); launcher returned {proc.poll()}")
        time.sleep(0.2)


def _release_when_requeued(cluster, job_key: str, proc, *updates: str, timeout: float = 150) -> None:
    """Wait until the job is pending again (requeued), then let it start now: SLURM holds a requeued job
    for about two minutes (its begin time), which would only slow the test down."""
    deadline = time.monotonic() + timeout
    while cluster.slurm("squeue", "-h", "-j", job_key, "-o", "%T") != "PENDING":
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"job {job_key} was not requeued: {cluster.slurm('squeue')}\n{cluster.logs()}")
        time.sleep(0.2)
    cluster.slurm("scontrol", "update", f"JobId={job_key}", "StartTime=now", *updates)


def _full_logs(sweep: Path) -> str:
    """Every start's stdout and stderr, whole (a requeued job appends to the same files)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep / ".submitit").rglob("*_log.*")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, uninterrupted, outside SLURM: computed once, when a test first calls it (each test calls
    it while its job is held, so that it costs no extra time)."""
    cache: dict[str, dict] = {}

    def metrics() -> dict:
        if "metrics" not in cache:
            cwd = tmp_path_factory.mktemp("reference")
            result = run_train(*RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
            assert result.returncode == 0, result.stderr[-3000:]
            cache["metrics"] = read_json(cwd / "run" / "metrics.json")
        return cache["metrics"]

    return metrics


def _check_resumed_run(cluster, sweep: Path, proc, reference: dict) -> list[dict]:
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        pytest.fail(
            f"{(sweep.parent / 'train.out').read_text()[-3000:]}\n{submitit_logs(sweep)}\n{cluster.logs()}"
        )
    job = sweep / "0"
    assert [p.relative_to(sweep) for p in sweep.rglob("metrics.json")] == [Path("0/metrics.json")]
    assert read_json(job / "metrics.json") == reference
    assert (
        torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        == 9
    )
    return [json.loads(line) for line in (job / "starts.jsonl").read_text().splitlines()]


def test_a_job_out_of_time_is_requeued_and_finishes_the_run(slurm_cluster, tmp_path, reference) -> None:  # noqa: F811
    sweep = tmp_path / "sweep"
    # sbatch --time=2 --signal=USR2@60: slurmctld (checking limits about every 30 s) sends the warning 60-90 s
    # after the start, to the first start held after epoch 1 by then; submitit's handler requeues the job.
    limits = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"]
    proc = start_train(
        *SLURM, *RUN, *PROBE, *limits, f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=slurm_cluster.env
    )
    _wait_for(sweep / "0" / "holding", 60, proc, "first start held after epoch 1")
    expected = reference()  # while the job is held
    _release_when_requeued(slurm_cluster, (sweep / "0" / "slurm_job_id").read_text().strip(), proc)
    starts = _check_resumed_run(slurm_cluster, sweep, proc, expected)
    assert [(s["restart"], s["step"]) for s in starts[:2]] == [(0, 0), (1, 3)]
    script = next((sweep / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --time=2\n" in script and "#SBATCH --signal=USR2@60\n" in script
    logs = _full_logs(sweep)
    assert "Caught signal SIGUSR2" in logs and "this job is timed-out" in logs, logs[-3000:]


def test_scontrol_requeue_resumes_the_run_in_its_own_directory(slurm_cluster, tmp_path, reference) -> None:  # noqa: F811
    sweep = tmp_path / "sweep"
    proc = start_train(*SLURM, *RUN, *PROBE, f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=slurm_cluster.env)
    _wait_for(sweep / "0" / "holding", 120, proc, "first start held after epoch 1")
    expected = reference()  # while the job is held
    job_key = (sweep / "0" / "slurm_job_id").read_text().strip()
    assert slurm_cluster.slurm("scontrol", "requeue", job_key) == ""
    _release_when_requeued(slurm_cluster, job_key, proc)

    starts = _check_resumed_run(slurm_cluster, sweep, proc, expected)
    assert [(s["restart"], s["step"]) for s in starts] == [(0, 0), (1, 3)]  # the second start resumed epoch 2

    # A finished job requeued again is not trained again: it reports the metrics it recorded.
    metrics_file = sweep / "0" / "metrics.json"
    written = metrics_file.stat().st_mtime_ns
    assert slurm_cluster.slurm("scontrol", "requeue", job_key) == ""
    _release_when_requeued(slurm_cluster, job_key, proc)
    # The third start must get as far as its decision before the queue is drained (drain cancels what still
    # runs after half its time, and a loaded machine can take that long to import torch and Lightning).
    deadline = time.monotonic() + 150
    while "already finished; not training again" not in _full_logs(sweep):
        if time.monotonic() > deadline:
            pytest.fail(
                f"the third start never decided:\n{_full_logs(sweep)[-3000:]}\n{slurm_cluster.logs()}"
            )
        time.sleep(0.5)
    slurm_cluster.drain(timeout=120)
    assert len((sweep / "0" / "starts.jsonl").read_text().splitlines()) == 2
    assert metrics_file.stat().st_mtime_ns == written
