"""Summarise a Hydra sweep: one row per job, its swept overrides and metrics, best job first.

    python -m oaml.sweep_summary multirun/occlusion/2026-11-29/10-00-00-123456
    python -m oaml.sweep_summary DIR --metric val/synthetic_occluded/qaconv_acc --out occlusion.csv
    python -m oaml.sweep_summary DIR --columns 'val/synthetic_occluded/*' --mode max --out occlusion.md
    python -m oaml.sweep_summary DIR --over seed --plot occlusion.png --x loss.occlusion --lines occlusion.weighting

Every job directory of a sweep holds ``.hydra/overrides.yaml`` (what the job was asked: the sweep's values and
the command line's) and, once it finished, ``metrics.json``. Columns are the overrides whose values differ
between jobs, the sort metric (by default the metric each job's ``best.ckpt`` monitored, in its direction),
and the metrics matching ``--columns``. Jobs without ``metrics.json`` (failed, or still running) are listed
last, never dropped. The table is printed as Markdown; ``--out`` also writes it as ``.csv`` or ``.md``.

``--over seed`` (any keys) treats those keys as repetitions, not settings: jobs that differ only in them form
one row, with the mean, the sample standard deviation (``_std``) and the number of finished jobs (``n``) of
every metric; a difference between rows means something only when it is large against the spread.
``--plot FILE.png`` draws the sort metric against ``--x`` (a swept key), one line per value of ``--lines``,
with the standard deviation over ``--over`` as error bars (``oaml.sweep_plot``; needs the ``plots`` extra).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from omegaconf import OmegaConf

DEFAULT_COLUMNS = ("val/*_acc", "val/*/occ_iou")
MISSING = "-"


@dataclass(frozen=True)
class JobResult:
    """One job of a sweep: where it ran, what it was asked, and what it reported."""

    name: str  # the job directory relative to the sweep directory, e.g. "3"
    overrides: dict[str, str]
    metrics: dict[str, float] | None  # None: no metrics.json (the job failed or is still running)
    monitor: str | None  # the metric its best.ckpt monitored
    mode: str  # "max" or "min": which direction is better for the monitor


def parse_override(text: str) -> tuple[str, str]:
    """``key=value`` (also ``+key=value``, ``++key=value``, ``group=option``) -> (key, value); ``~key`` -> (key, "~")."""
    if text.startswith("~"):
        return text[1:].split("=", 1)[0], "~"
    key, sep, value = text.lstrip("+").partition("=")
    if not sep:
        raise ValueError(f"override {text!r} is not of the form key=value")
    return key, value


def _monitor_of(config_path: Path) -> tuple[str | None, str]:
    """The metric (and direction) that picked the job's best.ckpt, read from its saved config: the checkpoint
    callback's monitor, else ``val.monitor``, else (null) training's own default for the job's val sets.
    For a trial of an Optuna search (``optimized_metric`` in its config): the metric the search optimised."""
    from oaml.data.pipeline.val_sets import resolve_monitor

    config = OmegaConf.load(config_path)
    if "optimized_metric" in config:  # a trial of an Optuna search: its objective, in the search's direction
        from oaml.training.search import default_objective_metric

        hydra_file = config_path.with_name("hydra.yaml")
        direction = "maximize"
        if hydra_file.is_file():
            direction = str(
                OmegaConf.select(OmegaConf.load(hydra_file), "hydra.sweeper.direction") or direction
            )
        return config.optimized_metric or default_objective_metric(
            config
        ), "min" if direction == "minimize" else "max"
    mode = str(OmegaConf.select(config, "callbacks.model_checkpoint.mode", default="max"))
    monitor = OmegaConf.select(config, "callbacks.model_checkpoint.monitor", default=None)
    if monitor is None:
        monitor = OmegaConf.select(config, "val.monitor", default=None)
    if monitor is None:
        single = OmegaConf.select(config, "val.pairs", default=None) or OmegaConf.select(
            config, "val.bin", default=None
        )
        if single:
            pair_sets = [Path(single).stem, f"{Path(single).stem}_occluded"]
        else:
            pair_sets = list(OmegaConf.select(config, "val.sets", default=None) or {})
        mask_sets = list(OmegaConf.select(config, "val.mask_sets", default=None) or {})
        monitor = resolve_monitor(None, pair_sets + mask_sets, mask_sets)
    return monitor, mode


def _read_metrics(path: Path) -> dict[str, float] | None:
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} holds no metrics mapping")
    return {str(k): float(v) for k, v in metrics.items()}


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every job under ``sweep_dir`` (each directory holding ``.hydra/overrides.yaml``), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    jobs = []
    for overrides_file in sweep_dir.rglob("overrides.yaml"):
        job_dir = overrides_file.parent.parent
        if overrides_file.parent.name != ".hydra" or ".submitit" in job_dir.parts:
            continue
        overrides = dict(parse_override(o) for o in yaml.safe_load(overrides_file.read_text()) or [])
        config_file = overrides_file.parent / "config.yaml"
        monitor, mode = _monitor_of(config_file) if config_file.is_file() else (None, "max")
        name = job_dir.relative_to(sweep_dir).as_posix()
        metrics = _read_metrics(job_dir / "metrics.json")
        jobs.append(JobResult(name if name != "." else job_dir.name, overrides, metrics, monitor, mode))
    if not jobs:
        raise ValueError(
            f"no job directories (with .hydra/overrides.yaml) under {sweep_dir}: pass the sweep's "
            "hydra.sweep.dir, e.g. multirun/occlusion/<date>/<time>"
        )
    return sorted(jobs, key=lambda job: _natural_key(job.name))


def swept_keys(jobs: Sequence[JobResult]) -> list[str]:
    """Override keys whose value differs between jobs (or that some jobs lack), in command-line order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k, MISSING) for job in jobs}) > 1]


def _sort_metric(jobs: Sequence[JobResult], metric: str | None, mode: str | None) -> tuple[str, str]:
    if metric is None:
        monitors = {(job.monitor, job.mode) for job in jobs if job.monitor is not None}
        if len(monitors) != 1:
            found = sorted(m for m, _ in monitors) or "none"
            raise ValueError(f"the jobs monitor {found}: choose the sort metric with --metric KEY")
        metric, monitored_mode = monitors.pop()
        return metric, mode or monitored_mode
    return metric, mode or "max"


def summarize(
    jobs: Sequence[JobResult],
    metric: str | None = None,
    mode: str | None = None,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> tuple[list[str], list[list[object]], str, str]:
    """The table: header, rows sorted by ``metric`` (best first; jobs without it last), the metric, its mode.

    Cells are override strings, floats, or ``None`` where a job has no value.
    """
    if mode not in (None, "max", "min"):
        raise ValueError(f"mode={mode!r} must be 'max' or 'min'")
    metric, mode = _sort_metric(jobs, metric, mode)
    finished = [job for job in jobs if job.metrics is not None]
    if finished and not any(metric in job.metrics for job in finished):
        known = sorted({k for job in finished for k in job.metrics})
        raise ValueError(f"no job reported the metric {metric!r}; the metrics are {known}")
    extra: list[str] = []
    for job in finished:
        for key in job.metrics:
            if key != metric and key not in extra and any(fnmatchcase(key, p) for p in columns):
                extra.append(key)
    extra.sort()
    keys = swept_keys(jobs)

    def rank(job: JobResult) -> tuple[int, float]:
        value = (job.metrics or {}).get(metric)
        if value is None or math.isnan(value):
            return (1, 0.0)
        return (0, -value if mode == "max" else value)

    rows = []
    for job in sorted(jobs, key=rank):  # stable: ties keep the job order
        values = job.metrics or {}
        cells: list[object] = [job.name, *(job.overrides.get(k, MISSING) for k in keys)]
        cells += [values.get(metric), *(values.get(k) for k in extra)]
        rows.append(cells)
    return ["job", *keys, metric, *extra], rows, metric, mode


@dataclass
class JobGroup:
    """Jobs that differ only in the ``--over`` keys (e.g. seeds): one setting, repeated."""

    settings: dict[str, str]  # the swept keys other than the --over keys, and their values
    jobs: list[JobResult] = field(default_factory=list)

    @property
    def finished(self) -> list[JobResult]:
        return [job for job in self.jobs if job.metrics is not None]

    def stats(self, metric: str) -> tuple[float | None, float | None, int]:
        """Mean, sample standard deviation (None below two values) and count of ``metric`` over the group."""
        values = [job.metrics[metric] for job in self.finished if metric in job.metrics]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return None, None, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def group_jobs(jobs: Sequence[JobResult], over: Sequence[str]) -> list[JobGroup]:
    """Jobs grouped by every swept key except ``over``, in the order each setting first appears."""
    unknown = [key for key in over if not any(key in job.overrides for job in jobs)]
    if unknown:
        raise ValueError(
            f"--over {' '.join(unknown)}: no job was given that key; the jobs' overrides are "
            f"{sorted({k for job in jobs for k in job.overrides})}"
        )
    keys = [k for k in swept_keys(jobs) if k not in over]
    groups: dict[tuple[str, ...], JobGroup] = {}
    for job in jobs:
        settings = {k: job.overrides.get(k, MISSING) for k in keys}
        groups.setdefault(tuple(settings.values()), JobGroup(settings)).jobs.append(job)
    return list(groups.values())


def summarize_groups(
    groups: Sequence[JobGroup],
    metric: str,
    mode: str,
    columns: Sequence[str] = DEFAULT_COLUMNS,
) -> tuple[list[str], list[list[object]]]:
    """The table over groups: settings, ``n``, then mean and ``_std`` of the sort metric and of the metrics
    matching ``columns``; best mean first, groups without the metric last."""
    finished = [job for group in groups for job in group.finished]
    extra = sorted(
        {
            k
            for job in finished
            for k in job.metrics
            if k != metric and any(fnmatchcase(k, p) for p in columns)
        }
    )
    keys = list(groups[0].settings) if groups else []

    def rank(group: JobGroup) -> tuple[int, float]:
        mean = group.stats(metric)[0]
        return (1, 0.0) if mean is None else (0, -mean if mode == "max" else mean)

    rows = []
    for group in sorted(groups, key=rank):
        cells: list[object] = [*group.settings.values(), group.stats(metric)[2]]
        for name in (metric, *extra):
            mean, std, _ = group.stats(name)
            cells += [mean, std]
        rows.append(cells)
    header = [*keys, "n"]
    for name in (metric, *extra):
        header += [name, f"{name}_std"]
    return header, rows


def _cell(value: object, digits: int | None) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else repr(value)
    return str(value)


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4) -> str:
    """A Markdown table; columns that hold only numbers are right-aligned."""
    numeric = [
        all(row[i] is None or isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else _cell(v, None) for v in row])
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oaml.sweep_summary", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep's directory (hydra.sweep.dir)")
    parser.add_argument("--metric", help="sort by this metric (default: the metric the jobs monitored)")
    parser.add_argument("--mode", choices=("max", "min"), help="best is highest (max) or lowest (min)")
    parser.add_argument(
        "--columns",
        nargs="*",
        default=list(DEFAULT_COLUMNS),
        help="more metric columns, as glob patterns (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this .csv or .md file")
    parser.add_argument(
        "--over",
        nargs="+",
        default=[],
        metavar="KEY",
        help="repetition keys (e.g. seed): one row per setting with mean, std and count over them",
    )
    parser.add_argument(
        "--plot", type=Path, help="draw the sort metric into this .png (needs the plots extra)"
    )
    parser.add_argument("--x", dest="x_key", metavar="KEY", help="--plot: the swept key on the x axis")
    parser.add_argument("--lines", metavar="KEY", help="--plot: one line per value of this swept key")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.suffix not in (".csv", ".md"):
        parser.error(f"--out {args.out}: the file name must end in .csv or .md")
    if args.plot is not None and args.plot.suffix != ".png":
        parser.error(f"--plot {args.plot}: the file name must end in .png")

    try:
        return _summarize_sweep(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: one line, as the other entry points say it
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {error}", file=sys.stderr)
        return 1


def _summarize_sweep(args: argparse.Namespace) -> int:
    """Print (and write, and plot) the summary ``main`` parsed the arguments for."""
    jobs = find_jobs(args.sweep_dir)
    header, rows, metric, mode = summarize(jobs, args.metric, args.mode, args.columns)
    direction = "highest" if mode == "max" else "lowest"
    if args.over:
        groups = group_jobs(jobs, args.over)
        header, rows = summarize_groups(groups, metric, mode, args.columns)
        print(
            f"{len(jobs)} jobs in {args.sweep_dir} as {len(groups)} settings over {' '.join(args.over)} "
            f"(mean, sample std, n), sorted by mean {metric} ({direction} first)\n"
        )
    else:
        print(f"{len(jobs)} jobs in {args.sweep_dir}, sorted by {metric} ({direction} first)\n")
    table = to_markdown(header, rows)
    print(table, end="")
    varied = swept_keys(jobs)
    common = {k: v for k, v in jobs[0].overrides.items() if k not in varied}
    if common:
        print("\nCommon to all jobs: " + " ".join(f"{k}={v}" for k, v in common.items()))
    unfinished = [job.name for job in jobs if job.metrics is None]
    if unfinished:
        print(f"\nNo metrics.json (failed or still running): {', '.join(unfinished)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_csv(header, rows) if args.out.suffix == ".csv" else table, encoding="utf-8")
    if args.plot is not None:
        from oaml.sweep_plot import plot_metric

        plot_metric(jobs, metric, args.plot, x_key=args.x_key, line_key=args.lines, over=args.over)
        print(f"\nPlot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
