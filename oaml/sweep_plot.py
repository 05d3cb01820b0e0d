"""One figure of a sweep: a metric against one swept key, one line per value of another, error bars over seeds.

    python -m oaml.sweep_summary DIR --over seed --plot occ.png --x loss.occlusion --lines occlusion.weighting

Every point is the mean over the jobs that share its (x, line) setting and differ only in the ``--over``
keys; its error bar is their sample standard deviation (none with one job). The jobs may differ in no other
key: a point would silently average over it. x values that all read as numbers are placed on a numeric axis,
otherwise in order of appearance. Matplotlib is an optional dependency (``pip install -e '.[plots]'``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from oaml.sweep_summary import JobGroup, JobResult, group_jobs, swept_keys


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def choose_axes(
    jobs: Sequence[JobResult], x_key: str | None, line_key: str | None, over: Sequence[str]
) -> tuple[str, str | None]:
    """``--x`` and ``--lines``, defaulting to the first and second swept keys not in ``over``; refuses a
    sweep whose jobs also differ in a third key."""
    keys = [k for k in swept_keys(jobs) if k not in over]
    for name, key in (("--x", x_key), ("--lines", line_key)):
        if key is not None and key not in keys:
            raise ValueError(f"{name} {key} is not a swept key of these jobs (besides --over); swept: {keys}")
    x_key = x_key or next((k for k in keys if k != line_key), None)
    if x_key is None:
        raise ValueError("the jobs differ in no key besides --over: nothing to put on the x axis")
    if line_key is None:
        line_key = next((k for k in keys if k != x_key), None)
    rest = [k for k in keys if k not in (x_key, line_key)]
    if rest:
        raise ValueError(
            f"the jobs also differ in {', '.join(rest)}: each point would average over it; add it to --over "
            "if it is a repetition, or summarise one value of it at a time"
        )
    return x_key, line_key


def plot_points(
    groups: Sequence[JobGroup], metric: str, x_key: str, line_key: str | None
) -> dict[str, list[tuple[str, float, float | None]]]:
    """Per line value: (x value, mean, std) of ``metric``, for the groups that reported it."""
    lines: dict[str, list[tuple[str, float, float | None]]] = {}
    for group in groups:
        mean, std, _ = group.stats(metric)
        if mean is None:
            continue
        line = group.settings.get(line_key, "") if line_key else ""
        lines.setdefault(line, []).append((group.settings[x_key], mean, std))
    return lines


def plot_metric(
    jobs: Sequence[JobResult],
    metric: str,
    out: Path,
    x_key: str | None = None,
    line_key: str | None = None,
    over: Sequence[str] = (),
) -> dict[str, list[tuple[str, float, float | None]]]:
    """Draw ``metric`` into ``out`` (PNG); return the plotted points per line."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a cluster node
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install -e '.[plots]'") from error
    x_key, line_key = choose_axes(jobs, x_key, line_key, over)
    lines = plot_points(group_jobs(jobs, over), metric, x_key, line_key)
    if not lines:
        raise ValueError(f"no finished job reported {metric}: nothing to plot")
    all_x = list(dict.fromkeys(x for points in lines.values() for x, _, _ in points))
    numeric = all(_as_number(x) is not None for x in all_x)
    position = {x: (_as_number(x) if numeric else float(i)) for i, x in enumerate(all_x)}

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for line, points in lines.items():
        points = sorted(points, key=lambda p: position[p[0]])
        xs = [position[x] for x, _, _ in points]
        means = [m for _, m, _ in points]
        errors = [0.0 if s is None or math.isnan(s) else s for _, _, s in points]
        label = f"{line_key}={line}" if line_key else None
        ax.errorbar(xs, means, yerr=errors if over else None, marker="o", capsize=3, label=label)
    if not numeric:
        ax.set_xticks([position[x] for x in all_x], all_x)
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    title = f"{metric} vs {x_key}"
    ax.set_title(title + (f" (mean ± std over {', '.join(over)})" if over else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if line_key:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return lines
