"""Real SLURM jobs through ``hydra/launcher=slurm`` on a one-node cluster started for this session
(slurm_cluster.py): a 2-point sweep as two jobs, and one job whose two srun tasks form a 2-rank DDP world.

Skipped where SLURM is not installed, unless OAML_REQUIRE_SLURM=1 (CI): then they fail.
"""

from __future__ import annotations

import pytest
import slurm_cluster as cluster_module
from launch_cli import DDP_RUN, PROBE, SWEEP_RUN, job_dirs, job_overrides, read_json, run_train, submitit_logs
from slurm_cluster import skip_or_fail_without_slurm, slurm_cluster  # noqa: F401  (the cluster fixture)

SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1"]


def _run_on_cluster(cluster, sweep, *args: str):
    result = run_train(*SLURM, *args, *PROBE, f"hydra.sweep.dir={sweep}", cwd=sweep.parent, env=cluster.env)
    if result.returncode != 0:
        logs = submitit_logs(sweep) if (sweep / ".submitit").exists() else ""
        pytest.fail(f"{result.stderr[-3000:]}\n{logs}\n{cluster.logs()}")
    return result


def _sbatch_script(sweep) -> str:
    scripts = list((sweep / ".submitit").rglob("*_submission.sh"))
    assert len(scripts) == 1, scripts
    return scripts[0].read_text()


def test_slurm_sweep_runs_each_point_as_its_own_job(slurm_cluster, tmp_path) -> None:  # noqa: F811
    sweep = tmp_path / "sweep"
    _run_on_cluster(slurm_cluster, sweep, *SWEEP_RUN, "loss.occlusion=0.05,0.2")

    jobs = job_dirs(sweep)
    assert [job.name for job in jobs] == ["0", "1"]
    weights = [next(o for o in job_overrides(job) if o.startswith("loss.occlusion=")) for job in jobs]
    assert weights == ["loss.occlusion=0.05", "loss.occlusion=0.2"]
    for job in jobs:
        assert "val/synthetic_occluded/fused_acc" in read_json(job / "metrics.json")
        probe = read_json(job / "world_rank0.json")
        assert probe["slurm_procid"] == "0" and probe["world_size"] == 1  # ran as a SLURM task, alone
    assert read_json(jobs[0] / "world_rank0.json")["pid"] != read_json(jobs[1] / "world_rank0.json")["pid"]
    # One array job of two, submitted with the launcher's keys; its files live inside the sweep.
    script = _sbatch_script(sweep)
    for line in ("--array=0-1%2", "--partition=debug", "--ntasks-per-node=1", "--nodes=1", "--time=1440"):
        assert f"#SBATCH {line}\n" in script


def test_slurm_job_trains_one_ddp_world_of_two_ranks(slurm_cluster, tmp_path) -> None:  # noqa: F811
    sweep = tmp_path / "sweep"
    _run_on_cluster(slurm_cluster, sweep, *DDP_RUN)

    (job,) = job_dirs(sweep)
    assert len(list(sweep.rglob("metrics.json"))) == 1
    metrics = read_json(job / "metrics.json")
    assert metrics["train/loss_qaconv"] > 0.0
    ranks = [read_json(job / f"world_rank{r}.json") for r in range(2)]
    for rank, record in enumerate(ranks):
        # srun started both tasks and Lightning took each rank from SLURM.
        assert record["cluster_environment"] == "SLURMEnvironment"
        assert record["slurm_procid"] == str(rank) and record["global_rank"] == rank
        assert record["world_size"] == 2
        assert record["gathered_ranks"] == [0, 1]
        assert record["sum_of_ones"] == 2.0  # an all-reduce over both tasks: fails for two worlds of one
    assert ranks[0]["pid"] != ranks[1]["pid"]
    # tasks_per_node followed trainer.devices (launcher default ${trainer.devices}).
    assert "#SBATCH --ntasks-per-node=2\n" in _sbatch_script(sweep)


def test_missing_slurm_skips_unless_ci_requires_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_module, "BINARIES", ("slurmctld", "no-such-slurm-binary"))
    monkeypatch.delenv("OAML_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no-such-slurm-binary\): run \.ci/install-slurm"):
        skip_or_fail_without_slurm()
    monkeypatch.setenv("OAML_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="OAML_REQUIRE_SLURM=1 but SLURM binaries not found"):
        skip_or_fail_without_slurm()
