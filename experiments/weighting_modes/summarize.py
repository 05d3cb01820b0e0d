"""Print the weighting-mode study as a Markdown table from the sweep's metrics.json files.

python experiments/weighting_modes/summarize.py [multirun/weighting_modes]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

COLUMNS = [
    ("synthetic", "adaface_acc"),
    ("synthetic", "qaconv_acc"),
    ("synthetic_occluded", "adaface_acc"),
    ("synthetic_occluded", "qaconv_acc"),
    ("synthetic_occluded", "qaconv_novis_acc"),
    ("synthetic_occluded", "fused_acc"),
    ("synthetic_occluded", "occ_iou"),
]


def main(sweep: Path) -> None:
    print("| weighting | " + " | ".join(f"{s} {m}" for s, m in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        weighting = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["occlusion"]["weighting"]
        metrics = json.loads((job / "metrics.json").read_text())
        cells = [f"{metrics[f'val/{s}/{m}']:.3f}" for s, m in COLUMNS]
        print(f"| {weighting} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "multirun/weighting_modes"))
