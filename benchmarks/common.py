"""Shared pieces of the benchmark scripts: the real composed config, the machine line, timing helpers.

Benchmarks are run as scripts (``python benchmarks/<name>.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import oaml.paths


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config ``python -m oaml.<config_name>`` would run with these overrides (no run directory)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(oaml.paths.CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def load_average() -> str:
    """``uptime``'s 1/5/15-minute load: timings on a shared machine are only as good as this."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return (
        f"# {where}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"load average {load_average()}"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device's queued work included (the benchmark synchronises, the
    code it measures does not)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(
    cases: dict[str, Callable[[], object]], device: torch.device, steps: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each case, the cases taking turns (case A, B, C, A, B, C, ...), so that
    a change in the machine's load hits all of them alike and their ratios stay fair."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(steps):
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}
