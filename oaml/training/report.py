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
    """'val/<set>/<score>_<metric>' -> (set, score, metric); (set, '', metric) for occlusion-head metrics."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "val":
        return None
    # Longest score name first: "qaconv_novis_acc" belongs to qaconv_novis, not to qaconv.
    for score in sorted(SCORE_NAMES, key=len, reverse=True):
        if parts[2].startswith(score + "_"):
            return parts[1], score, parts[2][len(score) + 1 :]
    return parts[1], "", parts[2]


def _table(title: str, first_columns: list[str], rows: dict[tuple[str, ...], dict[str, float]]) -> Table:
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns and c not in ("acc_std", "threshold")]
    table = Table(title=title)
    for name in first_columns:
        table.add_column(name)
    for column in columns:
        table.add_column(column, justify="right")
    for key, values in rows.items():
        table.add_row(*key, *(f"{values[c]:.4f}" if c in values else "" for c in columns))
    return table


def print_metrics_table(
    metrics: dict[str, float], title: str = "Validation", console: Console | None = None
) -> None:
    """Verification metrics as one row per (set, score); occlusion-head metrics as one row per set."""
    scores: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    occlusion: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        split = _split_key(key)
        if split is None:
            continue
        set_name, score, metric = split
        if score:
            scores[(set_name, score)][metric] = value
        else:
            occlusion[(set_name,)][metric] = value
    # Wide enough for every column also when the output is a file or a pipe (rich assumes 80 there).
    console = console or Console(width=max(Console().width, 140))
    if scores:
        console.print(_table(title, ["set", "score"], scores))
    if occlusion:
        console.print(_table("OcclusionHead", ["set"], occlusion))
