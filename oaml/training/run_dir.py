"""Run directories are write-once: a run never writes into a directory that already holds results."""

from __future__ import annotations

import os
from pathlib import Path

RESULT_NAMES = ("metrics.json", "checkpoints", "tensorboard")


def claim_run_dir(run_dir: Path) -> Path:
    """Return ``run_dir`` after checking that no earlier run left results in it.

    Hydra names run directories by time (to the microsecond), so this only fires when a user points
    ``hydra.run.dir`` at an existing run, where continuing would overwrite its checkpoints and metrics.
    """
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0:
        return run_dir  # a DDP child process: it shares the run directory that rank 0 claimed
    taken = [name for name in RESULT_NAMES if (run_dir / name).exists()]
    if taken:
        raise FileExistsError(
            f"run directory {run_dir} already holds results of an earlier run ({', '.join(taken)}); "
            "choose a new hydra.run.dir (to resume, keep the default and pass ckpt_path=<old>/checkpoints/last.ckpt)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
