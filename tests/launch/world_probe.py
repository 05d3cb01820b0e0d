"""A Lightning callback that records, in each rank, which distributed world that rank trained in.

Added to real launcher runs through the config (``+callbacks.world_probe._target_=world_probe.RecordWorld``,
with ``tests/launch`` on PYTHONPATH). The all-reduce and all-gather are collectives: they only return 2 and
[0, 1] when both processes joined one process group. Two tasks that each trained alone would both report
rank 0 of a world of 1, and a sum of 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch


class RecordWorld(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        ones = strategy.reduce(torch.tensor(1.0), reduce_op="sum")
        ranks = strategy.all_gather(torch.tensor(trainer.global_rank))
        record = {
            "world_size": trainer.world_size,
            "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank,
            "cluster_environment": type(strategy.cluster_environment).__name__
            if hasattr(strategy, "cluster_environment")
            else None,
            "sum_of_ones": float(ones),
            "gathered_ranks": sorted(int(r) for r in ranks.reshape(-1).tolist()),
            "pid": os.getpid(),
            "slurm_procid": os.environ.get("SLURM_PROCID"),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"world_rank{trainer.global_rank}.json").write_text(json.dumps(record))
