"""The training entry point, run for real on tiny settings: in-process and as the CLI users type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_OVERRIDES

from oaml.train import train

SCORES = ("adaface", "qaconv", "qaconv_novis", "fused")


def test_train_writes_metrics_checkpoint_and_events(tiny_train_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = train(tiny_train_config(run_dir=run_dir))

    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    for split in ("synthetic", "synthetic_occluded"):
        for score in SCORES:
            assert 0.0 <= written[f"val/{split}/{score}_acc"] <= 1.0
            assert 0.0 <= written[f"val/{split}/{score}_eer"] <= 1.0
        assert 0.0 <= written[f"val/{split}/visibility_clean"] <= 1.0
    # Occluded pairs have known hidden regions, so the hidden-region IoU is measurable there.
    assert 0.0 <= written["val/synthetic_occluded/occ_iou"] <= 1.0
    for loss in ("adaface", "qaconv", "occlusion"):
        assert written[f"train/loss_{loss}"] > 0.0

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["oaml"]["backbone"]["name"] == "ir_nano"
    assert any(k.startswith("backbone.occlusion_head.") for k in checkpoint["state_dict"])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_train_refuses_a_run_dir_with_results(tiny_train_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "taken"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    with pytest.raises(FileExistsError, match="already holds results"):
        train(tiny_train_config(run_dir=run_dir))
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run's checkpoint"


def test_same_config_gives_same_numbers(tiny_train_config, tmp_path: Path) -> None:
    first = train(tiny_train_config("trainer.max_steps=2", run_dir=tmp_path / "a"))
    second = train(tiny_train_config("trainer.max_steps=2", run_dir=tmp_path / "b"))
    assert first == second
    changed = train(tiny_train_config("trainer.max_steps=2", "seed=7", run_dir=tmp_path / "c"))
    assert changed != first


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oaml.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_run_writes_config_metrics_and_prints_table(tmp_path: Path) -> None:
    run_dir = tmp_path / "cli"
    result = _run_cli(*TINY_OVERRIDES, f"hydra.run.dir={run_dir}", "loss.occlusion=0.15", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "occlusion: 0.15" in config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/synthetic/adaface_acc" in metrics
    assert "val/synthetic_occluded/qaconv_acc" in metrics
    assert "Validation after 3 steps" in result.stdout
    assert "synthetic_occluded" in result.stdout


def test_cli_mission_override_syntax_with_ir50_fast_dev_run(tmp_path: Path) -> None:
    """`python -m oaml.train backbone=ir50 loss.occlusion=0.15 trainer.fast_dev_run=true` composes and runs."""
    run_dir = tmp_path / "ir50"
    result = _run_cli(
        "backbone=ir50",
        "loss.occlusion=0.15",
        "trainer.fast_dev_run=true",
        # Keep the one IR-50 batch small: this machine trains IR-50 at about one image per second.
        "data.batch_size=8",
        "data.val_batch_size=4",
        "data.num_workers=0",
        f"hydra.run.dir={run_dir}",
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/loss_qaconv"] > 0.0
    assert "fast_dev_run" in result.stderr or "fast_dev_run" in result.stdout


def test_cli_refuses_an_earlier_run_dir_before_touching_its_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "earlier"
    first = _run_cli(*TINY_OVERRIDES, "trainer.max_steps=1", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    checkpoint = (run_dir / "checkpoints" / "last.ckpt").read_bytes()

    second = _run_cli(*TINY_OVERRIDES, "loss.occlusion=0.77", f"hydra.run.dir={run_dir}", cwd=REPO)
    assert second.returncode != 0
    assert "already holds results" in second.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == saved
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == checkpoint


def test_224_input_trains_end_to_end(tiny_train_config, tmp_path: Path) -> None:
    """backbone.input_size=224: the synthetic faces, the val pairs and the 14x14 maps follow it."""
    run_dir = tmp_path / "run"
    metrics = train(tiny_train_config("backbone.input_size=224", "trainer.max_steps=2", run_dir=run_dir))
    assert 0.0 <= metrics["val/synthetic_occluded/qaconv_acc"] <= 1.0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["oaml"]["backbone"]["input_size"] == 224
    assert checkpoint["state_dict"]["matcher.fc.weight"].shape == (1, 14 * 14)
