"""Requeued SLURM jobs continue their own run instead of starting over or being refused.

A SLURM job can stop before its training does: preempted by a higher-priority job, out of its ``--time``
(submitit catches the warning signal, ``USR2`` ``signal_delay_s`` before the limit, and requeues the job:
``hydra.launcher.max_num_timeout`` times at most), or requeued by hand (``scontrol requeue``). The job then
starts again with the same job id and the same arguments, so it computes the same run directory.

How this fits write-once run directories: the first start marks the directory with its SLURM job id
(``oaml.training.run_dir.JOB_MARKER``). A later start of *that* job finds the mark and

- a ``metrics.json``: the run had finished (requeued after it wrote its results): it is not rerun, the
  recorded metrics are returned as they are;
- else a ``checkpoints/last.ckpt``: training continues from it (its loop state, optimizer and schedule), in
  the same directory, and ends with one ``metrics.json`` like an uninterrupted run's;
- else: it starts over (it was stopped before its first checkpoint).

Any other process still finds the directory taken. What is lost at each stop: the steps since the last
``last.ckpt`` (after every ``callbacks.last_checkpoint.every_n_epochs``-th epoch, and every
``every_n_train_steps`` steps when set).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from oaml.training.run_dir import owned_by_this_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Requeue:
    """What a (re)started run should do with its directory."""

    finished_metrics: dict[str, float] | None = None  # the run had finished: report these, do not train
    ckpt_path: str | None = None  # resume from this checkpoint (the run's own last.ckpt)


def requeued_run(run_dir: Path) -> Requeue:
    """Inspect ``run_dir`` as a restarted SLURM job would find it (see the module docstring)."""
    if not owned_by_this_job(run_dir):
        return Requeue()
    restarts = os.environ.get("SLURM_RESTART_COUNT", "?")
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        log.info("Requeued job (restart %s): %s already finished; not training again.", restarts, run_dir)
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        return Requeue(finished_metrics={str(k): float(v) for k, v in metrics.items()})
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("Requeued job (restart %s): resuming %s from %s.", restarts, run_dir, last)
        return Requeue(ckpt_path=str(last))
    log.info(
        "Requeued job (restart %s): no checkpoint in %s yet; training from the start.", restarts, run_dir
    )
    return Requeue()
