"""Learning-rate schedules that need the run's length, which only the Trainer knows.

``configure_optimizers`` passes ``total_steps`` (Lightning's estimated optimizer steps of the whole run)
to any scheduler factory that asks for it, so a config never has to repeat the run length by hand.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from oaml.errors import ConfigError


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup over the first ``warmup_fraction`` of the run, then cosine decay to ``min_lr_ratio * lr``.

    The warmup is a fraction rather than a step count so that one config serves a 3-step test and a
    100k-step run alike. Step it every optimizer step (``optimizer.scheduler_interval=step``).
    """
    if total_steps <= 0:
        raise ConfigError(
            f"warmup_cosine needs total_steps > 0, got {total_steps} (is trainer.max_steps or max_epochs set?)"
        )
    if not 0.0 <= warmup_fraction < 1.0:
        raise ConfigError(f"optimizer.lr_scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    warmup_steps = int(round(warmup_fraction * total_steps))
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"optimizer.lr_scheduler.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
