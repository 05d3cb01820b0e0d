"""oaml.sweep_summary on a sweep directory laid out as Hydra and oaml.train write it.

Each job directory gets the files a real job leaves: ``.hydra/overrides.yaml`` (a YAML list of the job's
overrides), ``.hydra/config.yaml`` (the composed train config, unresolved, as Hydra saves it) and, for
finished jobs, ``metrics.json``. A real sweep is summarised in test_submitit_local.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from conftest import compose_train_config
from omegaconf import OmegaConf

from oaml.sweep_summary import find_jobs, main, parse_override, summarize, swept_keys

COMMON = ["trainer.max_steps=600", "+sweep=occlusion"]


def _write_job(sweep: Path, name: str, overrides: list[str], metrics: dict[str, float] | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = compose_train_config(job, [o for o in overrides if not o.startswith("+sweep")])
    config = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(config, job / ".hydra" / "config.yaml")  # unresolved, as Hydra saves it
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def _metrics(fused: float, qaconv: float, loss: float) -> dict[str, float]:
    return {
        "val/synthetic/fused_acc": fused,
        "val/synthetic_occluded/qaconv_acc": qaconv,
        "val/synthetic_occluded/occ_iou": 0.4,
        "train/loss": loss,
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Four jobs of a loss.occlusion x occlusion.weighting sweep; job 10 never finished."""
    root = tmp_path / "sweep"
    _write_job(
        root, "0", [*COMMON, "loss.occlusion=0.05", "occlusion.weighting=none"], _metrics(0.80, 0.70, 3.0)
    )
    _write_job(
        root, "1", [*COMMON, "loss.occlusion=0.2", "occlusion.weighting=none"], _metrics(0.90, 0.60, 2.0)
    )
    _write_job(
        root, "2", [*COMMON, "loss.occlusion=0.05", "occlusion.weighting=mask"], _metrics(0.85, 0.75, 1.0)
    )
    _write_job(root, "10", [*COMMON, "loss.occlusion=0.2", "occlusion.weighting=mask"], None)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / ".submitit" / "123").mkdir(parents=True)
    return root


def test_overrides_parse_as_hydra_writes_them() -> None:
    assert parse_override("loss.occlusion=0.05") == ("loss.occlusion", "0.05")
    assert parse_override("+sweep=occlusion") == ("sweep", "occlusion")
    assert parse_override("++trainer.devices=2") == ("trainer.devices", "2")
    assert parse_override("val.monitor=val/a/fused_acc") == ("val.monitor", "val/a/fused_acc")
    assert parse_override("~callbacks.progress_bar") == ("callbacks.progress_bar", "~")
    with pytest.raises(ValueError, match="key=value"):
        parse_override("loss.occlusion")


def test_jobs_are_found_in_job_order_with_what_each_reported(sweep: Path) -> None:
    jobs = find_jobs(sweep)
    assert [job.name for job in jobs] == ["0", "1", "2", "10"]
    assert jobs[1].overrides["loss.occlusion"] == "0.2"
    assert jobs[1].metrics["val/synthetic/fused_acc"] == 0.90
    assert jobs[3].metrics is None
    # The monitor is resolved as training resolves it: val.monitor=null -> the first set's fused accuracy.
    assert {(job.monitor, job.mode) for job in jobs} == {("val/synthetic/fused_acc", "max")}
    assert swept_keys(jobs) == ["loss.occlusion", "occlusion.weighting"]


def test_table_is_sorted_by_the_monitored_metric_with_unfinished_jobs_last(sweep: Path) -> None:
    header, rows, metric, mode = summarize(find_jobs(sweep))
    assert (metric, mode) == ("val/synthetic/fused_acc", "max")
    assert header == [
        "job",
        "loss.occlusion",
        "occlusion.weighting",
        "val/synthetic/fused_acc",
        "val/synthetic_occluded/occ_iou",
        "val/synthetic_occluded/qaconv_acc",
    ]
    assert [row[0] for row in rows] == ["1", "2", "0", "10"]
    assert rows[0] == ["1", "0.2", "none", 0.90, 0.4, 0.60]
    assert rows[-1] == ["10", "0.2", "mask", None, None, None]


def test_any_metric_in_either_direction(sweep: Path) -> None:
    _, rows, _, mode = summarize(find_jobs(sweep), metric="train/loss", mode="min", columns=())
    assert mode == "min"
    assert [(row[0], row[-1]) for row in rows] == [("2", 1.0), ("1", 2.0), ("0", 3.0), ("10", None)]
    _, rows, _, _ = summarize(find_jobs(sweep), metric="val/synthetic_occluded/qaconv_acc", columns=())
    assert [row[0] for row in rows] == ["2", "0", "1", "10"]


def test_cli_prints_markdown_and_writes_csv(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tables" / "occlusion.csv"
    assert main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 jobs in" in printed and "sorted by val/synthetic/fused_acc (highest first)" in printed
    assert "| 1 | 0.2 | none | 0.9000 | 0.4000 | 0.6000 |" in printed
    assert "Common to all jobs: trainer.max_steps=600 sweep=occlusion" in printed
    assert "No metrics.json (failed or still running): 10" in printed

    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["job"] for row in table] == ["1", "2", "0", "10"]
    assert float(table[1]["val/synthetic/fused_acc"]) == 0.85
    assert table[3]["val/synthetic/fused_acc"] == ""

    markdown = tmp_path / "occlusion.md"
    main([str(sweep), "--columns", "--out", str(markdown)])
    assert markdown.read_text().splitlines()[0] == (
        "| job | loss.occlusion | occlusion.weighting | val/synthetic/fused_acc |"
    )


def test_bad_input_gets_a_clear_error(sweep: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_jobs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no job directories .*hydra\.sweep\.dir"):
        find_jobs(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"no job reported the metric 'val/lfw/fused_acc'.*train/loss"):
        summarize(find_jobs(sweep), metric="val/lfw/fused_acc")
    with pytest.raises(SystemExit):
        main([str(sweep), "--out", str(tmp_path / "table.xlsx")])


def test_the_command_reports_bad_input_in_one_line(sweep: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert main([str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"Error: sweep directory {tmp_path / 'nowhere'} does not exist"
    ]
    assert main([str(sweep), "--metric", "val/lfw/fused_acc"]) == 1
    assert "Error: no job reported the metric 'val/lfw/fused_acc'" in capsys.readouterr().err
