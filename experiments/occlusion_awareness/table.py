"""Tables and the plot of the occlusion-awareness study, from the run dirs its scripts wrote.

Each run dir is ``<root>/<config>_s<seed>`` with a ``metrics.json``; runs that differ only by seed are grouped
and every cell shows ``mean ± standard deviation (n)``. Usage:

    python experiments/occlusion_awareness/table.py outputs/oa --set synthetic [--configs A B ...] \
        [--plot experiments/occlusion_awareness/synthetic.png]

``--set`` names the clean verification set (its occluded twin is ``<set>_occluded``).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

COLUMNS = (
    ("clean adaface", "{s}/adaface_acc"),
    ("clean qaconv", "{s}/qaconv_acc"),
    ("clean qaconv_novis", "{s}/qaconv_novis_acc"),
    ("clean fused", "{s}/fused_acc"),
    ("occ. adaface", "{s}_occluded/adaface_acc"),
    ("occ. qaconv", "{s}_occluded/qaconv_acc"),
    ("occ. qaconv_novis", "{s}_occluded/qaconv_novis_acc"),
    ("occ. fused", "{s}_occluded/fused_acc"),
    ("IoU", "{s}_occluded/occ_iou"),
    ("vis. clean", "{s}/visibility_clean"),
)
RUN_NAME = re.compile(r"^(?P<config>.+)_s(?P<seed>\d+)$")


def load_runs(root: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{config: {seed: metrics}}`` of every finished run under ``root``."""
    runs: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for metrics_file in sorted(root.glob("*/metrics.json")):
        match = RUN_NAME.match(metrics_file.parent.name)
        if match:
            runs[match["config"]][int(match["seed"])] = json.loads(metrics_file.read_text())
    return dict(runs)


def summarise(per_seed: dict[int, dict[str, float]], key: str) -> tuple[float, float, int]:
    values = [metrics[key] for metrics in per_seed.values() if key in metrics]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def markdown_table(runs: dict[str, dict[int, dict[str, float]]], val_set: str, configs: list[str]) -> str:
    header = "| config | seeds | " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(COLUMNS)]
    for config in configs:
        per_seed = runs[config]
        cells = []
        for _, pattern in COLUMNS:
            mean, std, n = summarise(per_seed, "val/" + pattern.format(s=val_set))
            cells.append("" if n == 0 else f"{mean:.3f} ± {std:.3f}")
        seeds = ",".join(str(seed) for seed in sorted(per_seed))
        lines.append(f"| {config} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict[str, float]]], val_set: str, configs: list[str], out: Path) -> None:
    """Occluded against clean accuracy of each config's best-visibility QAConv score, seed spread as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, score in zip(axes, ("qaconv", "fused")):
        for config in configs:
            cx, sx, _ = summarise(runs[config], f"val/{val_set}/{score}_acc")
            oy, sy, _ = summarise(runs[config], f"val/{val_set}_occluded/{score}_acc")
            ax.errorbar(cx, oy, xerr=sx, yerr=sy, fmt="o", capsize=3, label=config)
        ax.set_xlabel(f"clean accuracy ({val_set}, {score})")
        ax.set_ylabel(f"occluded accuracy ({val_set}_occluded, {score})")
        ax.set_title(f"{score}: mean ± std over seeds")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--set", default="synthetic", dest="val_set")
    parser.add_argument("--configs", nargs="*", help="configs to show, in this order (default: all)")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    runs = load_runs(args.root)
    if not runs:
        raise SystemExit(f"no <config>_s<seed>/metrics.json under {args.root}")
    configs = args.configs or sorted(runs)
    missing = [config for config in configs if config not in runs]
    if missing:
        raise SystemExit(f"no finished runs for {missing} under {args.root}; have {sorted(runs)}")
    print(markdown_table(runs, args.val_set, configs))
    if args.plot:
        plot(runs, args.val_set, configs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
