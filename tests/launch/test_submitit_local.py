"""Real multiruns on this machine: submitit's local executor (``hydra/launcher=local``) and Hydra's basic
launcher, run as the CLI users type.

The local sweep is two points of the named occlusion sweep, each a 2-rank DDP job (two processes started by
submitit, ranks exported by oaml.training.launch_env): it proves one run dir per point with its own overrides
and metrics, that the two processes of a job formed one world of two (a collective only a joined world can
complete), that a finished sweep directory is never reused, and the summary of the real sweep.
"""

from __future__ import annotations

import csv
import io

import pytest
from launch_cli import DDP_RUN, PROBE, job_dirs, job_overrides, read_json, run_train, submitit_logs

from oaml.sweep_summary import main as summarize_sweep


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory):
    cwd = tmp_path_factory.mktemp("local")
    sweep = cwd / "sweep"
    result = run_train(
        "-m",
        "hydra/launcher=local",
        "+sweep=occlusion",
        "loss.occlusion=0.05,0.2",
        "occlusion.weighting=mask",
        *DDP_RUN,
        *PROBE,
        f"hydra.sweep.dir={sweep}",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:] + (submitit_logs(sweep) if sweep.exists() else "")
    return sweep


def test_local_sweep_gives_each_point_its_own_run_dir(local_sweep) -> None:
    jobs = job_dirs(local_sweep)
    assert [job.name for job in jobs] == ["0", "1"]
    weights = []
    for job in jobs:
        overrides = job_overrides(job)
        assert "occlusion.weighting=mask" in overrides
        weights += [o for o in overrides if o.startswith("loss.occlusion=")]
        config = (job / ".hydra" / "config.yaml").read_text()
        assert "weighting: mask" in config
        metrics = read_json(job / "metrics.json")
        assert 0.0 <= metrics["val/synthetic_occluded/qaconv_acc"] <= 1.0
        assert metrics["train/loss_occlusion"] > 0.0
        assert (job / "checkpoints" / "last.ckpt").is_file()
    assert weights == ["loss.occlusion=0.05", "loss.occlusion=0.2"]
    # submitit's own files stay inside the sweep directory, one folder per job.
    assert len([p for p in (local_sweep / ".submitit").iterdir() if p.name.isdigit()]) == 2


def test_local_ddp_job_is_one_world_of_two_ranks(local_sweep) -> None:
    pids = set()
    for job in job_dirs(local_sweep):
        ranks = [read_json(job / f"world_rank{r}.json") for r in range(2)]
        for rank, record in enumerate(ranks):
            assert record["global_rank"] == rank
            assert record["world_size"] == 2
            assert record["gathered_ranks"] == [0, 1]
            assert record["sum_of_ones"] == 2.0  # an all-reduce over both processes
            # Lightning adopted submitit's processes instead of re-executing the command line.
            assert record["cluster_environment"] == "LightningEnvironment"
        pids |= {r["pid"] for r in ranks}
        assert not list(job.glob("*ddp_process_1*")), "Lightning re-ran the command line for rank 1"
        # Only rank 0 logs: every event file (events.out.tfevents.<time>.<host>.<pid>.<n>) is its own.
        writers = {p.name.split(".")[-2] for p in (job / "tensorboard").glob("events.out.tfevents.*")}
        assert writers == {str(ranks[0]["pid"])}
    assert len(pids) == 4


def test_summary_of_the_real_sweep(local_sweep, capsys) -> None:
    out = local_sweep.parent / "summary.csv"
    summarize_sweep([str(local_sweep), "--out", str(out)])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(row["loss.occlusion"] for row in rows) == ["0.05", "0.2"]
    scores = [float(row["val/synthetic/fused_acc"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        metrics = read_json(local_sweep / row["job"] / "metrics.json")
        assert float(row["val/synthetic/fused_acc"]) == metrics["val/synthetic/fused_acc"]
    assert "occlusion.weighting=mask" in capsys.readouterr().out


def test_a_finished_sweep_directory_is_never_reused(local_sweep) -> None:
    before = {job.name: (job / "metrics.json").read_bytes() for job in job_dirs(local_sweep)}
    result = run_train(
        "-m", "hydra/launcher=local", "seed=1,2", f"hydra.sweep.dir={local_sweep}", cwd=local_sweep.parent
    )
    assert result.returncode != 0
    assert "already holds an earlier sweep" in result.stderr
    assert {job.name: (job / "metrics.json").read_bytes() for job in job_dirs(local_sweep)} == before


def test_basic_multirun_refuses_ddp_before_replaying_the_sweep(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    result = run_train("-m", "trainer=ddp_cpu", "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "replays the whole sweep" in output and "hydra/launcher=local" in output
    assert "MEMBER: 2/2" not in output  # no rank was started
    # Each job stopped before any training (Hydra's basic launcher goes on to the next job, refused too).
    assert [job.name for job in job_dirs(sweep)] == ["0", "1"]
    assert not list(sweep.rglob("metrics.json")) and not list(sweep.rglob("checkpoints"))
