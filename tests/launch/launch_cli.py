"""Running ``python -m oaml.train`` as users type it, for the launcher tests, and reading what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The tiny synthetic run (tests/conftest.py TINY_OVERRIDES), smaller still where only the plumbing is tested.
from conftest import TINY_OVERRIDES  # noqa: E402

SWEEP_RUN = [*TINY_OVERRIDES, "trainer.max_steps=2", "print_metrics=false"]
# 24 identities over 2 ranks: each rank fills whole batches of 4 identities x 4 images.
DDP_RUN = [*SWEEP_RUN, "data.train.num_identities=24", "trainer.accelerator=cpu", "trainer.devices=2"]
DDP_RUN += ["trainer.strategy=ddp"]
PROBE = [
    "+callbacks.world_probe._target_=world_probe.RecordWorld",
    "+callbacks.world_probe.out_dir=${hydra:runtime.output_dir}",
]


def train_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment plus ``env``, one torch thread, and tests/launch and the repo importable."""
    return {
        **os.environ,
        **(env or {}),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(REPO), os.environ.get("PYTHONPATH")])),
    }


def run_train(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300):
    """``python -m oaml.train ARGS`` in ``cwd``; one torch thread per process (2 cores for every rank)."""
    return subprocess.run(
        [sys.executable, "-m", "oaml.train", *args],
        cwd=cwd,
        env=train_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_train(*args: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """``run_train`` without waiting: the test acts while it runs (its output goes to ``cwd/train.out``)."""
    out = open(cwd / "train.out", "w")  # noqa: SIM115 (the child holds it; closed when the test ends)
    return subprocess.Popen(
        [sys.executable, "-m", "oaml.train", *args], cwd=cwd, env=train_env(env), stdout=out, stderr=out
    )


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job directories of a sweep (hydra.sweep.subdir = job number)."""
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def job_overrides(job_dir: Path) -> list[str]:
    return yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def submitit_logs(sweep_dir: Path) -> str:
    """Every task's stdout and stderr that submitit kept, for failure messages."""
    return "\n".join(
        f"== {p}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted((sweep_dir / ".submitit").rglob("*_log.*"))
    )
