"""occlusion.weighting_start_step: QAConv trains without the visibility until that step, with it from then on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oaml.train import train


def test_weighting_switches_on_at_the_configured_step(tiny_train_config, tmp_path: Path) -> None:
    probe_dir = tmp_path / "probe"
    train(
        tiny_train_config(
            "occlusion.weighting=covisible",
            "occlusion.weighting_start_step=2",
            "trainer.max_steps=4",
            "trainer.max_epochs=2",
            "+callbacks.matcher_probe._target_=matcher_probe.RecordMatcherVisibility",
            f"+callbacks.matcher_probe.out_dir={probe_dir}",
            run_dir=tmp_path / "run",
        )
    )
    given = {
        int(step): flag
        for step, flag in json.loads((probe_dir / "matcher_visibility.json").read_text()).items()
    }
    assert given == {0: False, 1: False, 2: True, 3: True}


def test_negative_start_step_names_the_key(tiny_train_config, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="occlusion.weighting_start_step"):
        train(tiny_train_config("occlusion.weighting_start_step=-1", run_dir=tmp_path / "run"))


def test_checkpoint_without_impostor_statistics_still_loads(tiny_train_config, tmp_path: Path) -> None:
    """A checkpoint written before the fused score's impostor statistics existed loads for evaluation; its
    fused score falls back to the fixed weights (no statistics)."""
    import torch

    from oaml.training.build import model_from_checkpoint

    run_dir = tmp_path / "run"
    train(tiny_train_config("trainer.max_steps=2", run_dir=run_dir))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"]["score_norm.num_updates"] == 2
    model = model_from_checkpoint(checkpoint, {"normalize": "impostor", "adaface": 0.5, "qaconv": 0.5}, ["s"])
    assert model.score_norm.ready
    checkpoint["state_dict"] = {
        k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("score_norm.")
    }
    old = model_from_checkpoint(checkpoint, {"normalize": "impostor", "adaface": 0.5, "qaconv": 0.5}, ["s"])
    assert not old.score_norm.ready
