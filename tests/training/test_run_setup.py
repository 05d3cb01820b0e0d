"""What a run is set up with: loss-weight checks, logger choices, the progress bar switch, progress lines in
redirected output, and one TensorBoard event file per run. Real runs of the entry point on tiny settings."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SYNTHETIC_TINY
from omegaconf import OmegaConf
from tensorboard.backend.event_processing import event_accumulator

from oaml.train import train
from oaml.training.build import loss_weights_from_config
from oaml.training.progress import count_images, format_duration


def test_negative_loss_weight_is_refused_before_anything_is_written(tiny_train_config, tmp_path) -> None:
    run_dir = tmp_path / "negative"
    with pytest.raises(ValueError, match=r"loss\.occlusion=-0\.5 is negative.*loss\.occlusion=0 switches"):
        train(tiny_train_config("loss.occlusion=-0.5", run_dir=run_dir))
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tensorboard").exists()
    with pytest.raises(ValueError, match=r"loss\.adaface=nan is not a number"):
        loss_weights_from_config(OmegaConf.create({"adaface": "nan", "qaconv": 1.0, "occlusion": 0.1}))
    with pytest.raises(ValueError, match=r"loss\.qaconv='high' is not a number"):
        loss_weights_from_config(OmegaConf.create({"adaface": 0.1, "qaconv": "high", "occlusion": 0.1}))
    # Zero switches a term off and is allowed.
    weights = loss_weights_from_config(OmegaConf.create({"adaface": 0, "qaconv": 0.9, "occlusion": 0.0}))
    assert weights == {"adaface": 0.0, "qaconv": 0.9, "occlusion": 0.0}


def test_trainer_logger_false_runs_without_any_logger(tiny_train_config, tmp_path) -> None:
    run_dir = tmp_path / "nolog"
    metrics = train(tiny_train_config("trainer.logger=false", "trainer.max_steps=2", run_dir=run_dir))
    assert metrics["val/synthetic_occluded/fused_acc"] >= 0.0
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    # No logger: no TensorBoard files, and the learning-rate monitor (which needs one) was left out.
    assert not list(run_dir.rglob("events.out.tfevents.*")) and not (run_dir / "tensorboard").exists()


def test_csv_logger_writes_losses_and_validation(tiny_train_config, tmp_path) -> None:
    run_dir = tmp_path / "csv"
    metrics = train(tiny_train_config("logger=csv", run_dir=run_dir))
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)  # one row per step
    key = "val/synthetic_occluded/fused_acc"
    logged = [float(r[key]) for r in rows if r.get(key)]
    assert logged == [pytest.approx(metrics[key])]
    assert not list(run_dir.rglob("events.out.tfevents.*"))


def _event_scalars(run_dir: Path) -> tuple[list[Path], dict[str, list[tuple[int, float]]]]:
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return files, scalars


def test_cli_to_a_file_logs_progress_and_keeps_one_event_file(tmp_path) -> None:
    """Output redirected to a file, as under SLURM; the progress bar switched off with the default progress
    bar callback still configured; a run stopped between validations (validated once more afterwards)."""
    run_dir = tmp_path / "run"
    log_file = tmp_path / "run.log"
    overrides = [
        *SYNTHETIC_TINY,
        "data.batch_size=16",
        "data.num_workers=0",
        "data.val_batch_size=40",
        "trainer.max_epochs=2",
        "trainer.max_steps=4",  # the second epoch stops after 1 of 3 steps: between validations
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_log.every_n_steps=2",
        f"hydra.run.dir={run_dir}",
    ]
    with log_file.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "oaml.train", *overrides],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=600,
        )
    text = log_file.read_text()
    assert result.returncode == 0, text[-3000:]
    lines = [line for line in text.splitlines() if "oaml.progress" in line]
    assert any("training 4 steps from step 0" in line for line in lines), lines
    step_lines = [line for line in lines if " step " in line and "img/s" in line]
    assert [line.split(" step ")[1].split(" ")[0] for line in step_lines] == ["2/4", "4/4"]
    assert "epoch 1/2" in step_lines[0] and "epoch 2/2" in step_lines[1]
    assert all("loss " in line and "loss_qaconv " in line and "ETA " in line for line in step_lines)
    validations = [line for line in lines if "validation at step" in line]
    assert [line.split("validation at step ")[1].split(":")[0] for line in validations] == ["3", "4"]
    assert "synthetic_occluded/fused_acc" in validations[-1]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    files, scalars = _event_scalars(run_dir)
    assert len(files) == 1, files  # the final validation went into the run's one event file
    assert len(scalars["val/synthetic_occluded/fused_acc"]) == 2  # after epoch 1, and the final one
    assert scalars["val/synthetic_occluded/fused_acc"][-1][1] == pytest.approx(
        metrics["val/synthetic_occluded/fused_acc"]
    )


def test_progress_helpers() -> None:
    assert format_duration(7.4) == "7s"
    assert format_duration(65) == "1m05s"
    assert format_duration(3725) == "1h02m05s"
    assert format_duration(math.nan) == "?"
    main = (torch.zeros(16, 3, 8, 8), torch.zeros(16), torch.zeros(16, 1, 7, 7))
    assert count_images({"main": main, "masks": (torch.zeros(4, 3, 8, 8), torch.zeros(4, 1, 7, 7))}) == 20


@pytest.mark.parametrize("terminal", [True, False])
@pytest.mark.parametrize("enable", [True, False])
def test_progress_bar_only_in_a_terminal_and_only_when_enabled(
    tiny_train_config, monkeypatch: pytest.MonkeyPatch, terminal: bool, enable: bool
) -> None:
    """Lightning refuses a progress bar callback next to enable_progress_bar=False (what aborted before);
    pytest's stdout is never a terminal, so the terminal is the one thing stood in for here."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

    from oaml.training import loggers

    monkeypatch.setattr(loggers, "stdout_is_terminal", lambda: terminal)
    cfg = tiny_train_config(
        f"trainer.enable_progress_bar={str(enable).lower()}",
        "callbacks.progress_bar={_target_: lightning.pytorch.callbacks.RichProgressBar}",
    )
    extras = loggers.trainer_extras(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, **extras)  # Lightning accepts the combination
    bars = [c for c in trainer.callbacks if isinstance(c, ProgressBar)]
    if terminal and enable:
        assert len(bars) == 1 and isinstance(bars[0], RichProgressBar)
    else:
        assert bars == [] and extras["enable_progress_bar"] is False
