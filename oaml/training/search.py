"""Hyperparameter search with Optuna (``python -m oaml.train -m hparams_search=occlusion``).

The search itself is hydra-optuna-sweeper's: it asks Optuna for a trial, launches it through whichever
launcher is selected (basic, ``local``, ``slurm``) and tells Optuna the value ``main()`` returned. What OAML
adds here is small:

- ``search_objective``: the value a run returns, ``optimized_metric`` of its metrics (null: the occluded
  fused accuracy of the first verification set, the number occlusion-aware matching exists for);
- ``PrepareStudyStorage``: a Hydra callback that creates the folder of the study's SQLite file before Optuna
  opens it (SQLite creates the file, not its folder), so that the study persists beside its sweeps and a
  second call of the same search continues it (the sweeper opens studies with ``load_if_exists``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SQLITE_PREFIX = "sqlite:///"


def first_pair_set(cfg: DictConfig) -> str | None:
    """The name of the first verification set of ``cfg.val`` (``val.pairs``/``val.bin``: the file's stem)."""
    single = OmegaConf.select(cfg, "val.pairs") or OmegaConf.select(cfg, "val.bin")
    if single:
        return Path(str(single)).stem
    sets = OmegaConf.select(cfg, "val.sets") or {}
    return next(iter(sets), None)


def default_objective_metric(cfg: DictConfig) -> str:
    """``val/<first set>_occluded/fused_acc`` (the first set itself when it is already the occluded one)."""
    name = first_pair_set(cfg)
    if name is None:
        raise ValueError(
            "this run has no verification set to optimise: set optimized_metric=val/<set>/<metric>"
        )
    occluded = name if name.endswith("_occluded") else f"{name}_occluded"
    return f"val/{occluded}/fused_acc"


def search_objective(cfg: DictConfig, metrics: Mapping[str, float]) -> float | None:
    """What ``python -m oaml.train`` returns to a sweeper: ``optimized_metric`` of ``metrics`` when the
    config has that key (a search), else the metric ``best.ckpt`` monitored (None when absent)."""
    if "optimized_metric" not in cfg:
        return metrics.get(OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor") or "")
    metric = cfg.optimized_metric or default_objective_metric(cfg)
    if metric not in metrics:
        raise KeyError(
            f"optimized_metric={metric} is not among this run's metrics ({', '.join(sorted(metrics))}); "
            "choose one of them with optimized_metric=..."
        )
    return float(metrics[metric])


def sqlite_path(storage: Any) -> Path | None:
    """The file of a ``sqlite:///PATH`` storage URL (relative to the working directory), else None."""
    if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):
        return Path(storage[len(SQLITE_PREFIX) :])
    return None


class PrepareStudyStorage(Callback):
    """Hydra callback: before the sweep starts, create the folder of the sweeper's SQLite study file."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = sqlite_path(OmegaConf.select(config, "hydra.sweeper.storage"))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
