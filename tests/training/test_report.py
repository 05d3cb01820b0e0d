from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from oaml.training.report import print_metrics_table, write_metrics_json


def test_table_rows_per_set_and_score() -> None:
    metrics = {
        "val/synthetic/adaface_acc": 0.91,
        "val/synthetic/qaconv_novis_acc": 0.77,
        "val/synthetic/qaconv_acc": 0.88,
        "val/synthetic_occluded/fused_eer": 0.12,
        "val/synthetic_occluded/occ_iou": 0.66,
        "train/loss": 3.0,
    }
    buffer = io.StringIO()
    print_metrics_table(metrics, console=Console(file=buffer, width=200))
    text = buffer.getvalue()
    rows = {
        line.split("│")[1].strip() + "/" + line.split("│")[2].strip(): line
        for line in text.splitlines()
        if line.count("│") > 3
    }
    assert "0.7700" in rows["synthetic/qaconv_novis"] and "0.8800" in rows["synthetic/qaconv"]
    assert "0.1200" in rows["synthetic_occluded/fused"]
    assert "OcclusionHead" in text and "0.6600" in text
    assert "3.0000" not in text  # training values are not validation results


def test_metrics_json_is_never_overwritten_and_never_holds_nan(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    write_metrics_json({"val/a/adaface_acc": 0.5}, path)
    assert json.loads(path.read_text()) == {"val/a/adaface_acc": 0.5}
    with pytest.raises(FileExistsError):
        write_metrics_json({"val/a/adaface_acc": 0.9}, path)
    with pytest.raises(ValueError, match="non-finite"):
        write_metrics_json({"val/a/adaface_acc": math.nan}, tmp_path / "other.json")
    assert json.loads(path.read_text()) == {"val/a/adaface_acc": 0.5}
