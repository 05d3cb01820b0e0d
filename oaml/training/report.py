"""Final metrics as files and as a table: ``metrics.json`` (flat, machine-readable) and a rich table."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from oaml.evaluation.scoring import SCORE_NAMES


def write_metrics_json(metrics: dict[str, float], path: Path) -> None:
    """Write the flat metrics dict; refuses to replace an existing file (results are never overwritten)."""
    bad = [key for key, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"refusing to write non-finite metrics {bad} to {path}")
    with open(path, "x", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _split_key(key: str) -> tuple[str, str, str] | None:
    """'val/<set>/<score>_<metric>' -> (set, score, metric); None for other keys."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "val":
        return None
    for score in SCORE_NAMES:
        if parts[2].startswith(score + "_"):
            metric = parts[2][len(score) + 1 :]
            if score == "qaconv" and metric.startswith("novis_"):
                continue
            return parts[1], score, metric
    return parts[1], "", parts[2]


def print_metrics_table(metrics: dict[str, float], title: str = "Validation", console: Console | None = None) -> None:
    """One row per (set, score), one column per metric; occlusion-head metrics in a row of their own."""
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    columns: list[str] = []
    for key, value in metrics.items():
        split = _split_key(key)
        if split is None:
            continue
        set_name, score, metric = split
        rows[(set_name, score or "occlusion head")][metric] = value
        if metric not in columns and metric not in ("acc_std", "threshold"):
            columns.append(metric)
    table = Table(title=title)
    table.add_column("set")
    table.add_column("score")
    for column in columns:
        table.add_column(column, justify="right")
    for (set_name, score), values in rows.items():
        table.add_row(set_name, score, *(f"{values[c]:.4f}" if c in values else "" for c in columns))
    (console or Console()).print(table)
