"""Write-once run directories and SLURM requeues, in-process: only the job that claimed a directory may come
back into it, and a finished run is not trained again. (tests/launch/test_slurm_requeue.py requeues real
SLURM jobs.)"""

from __future__ import annotations

import json

import pytest

from oaml.train import train
from oaml.training.run_dir import JOB_MARKER


def test_a_requeued_job_never_reruns_its_finished_run_and_others_are_refused(
    tiny_train_config, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "44")
    first = train(tiny_train_config("trainer.max_steps=2", run_dir=run_dir))
    assert (run_dir / JOB_MARKER).read_text() == "41_3\n"
    written = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}

    # The same array task started again (SLURM_RESTART_COUNT=1): the recorded metrics, nothing retrained.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = train(tiny_train_config("trainer.max_steps=2", run_dir=run_dir))
    assert again == pytest.approx(first) and again == json.loads((run_dir / "metrics.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written

    # Another task of the array, or no SLURM job at all, finds the directory taken.
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    with pytest.raises(FileExistsError, match="already holds results"):
        train(tiny_train_config("trainer.max_steps=2", run_dir=run_dir))
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name)
    with pytest.raises(FileExistsError, match="already holds results"):
        train(tiny_train_config("trainer.max_steps=2", run_dir=run_dir))
