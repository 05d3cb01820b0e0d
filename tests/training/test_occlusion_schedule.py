"""occlusion.weighting_start_step (QAConv trains without the visibility until that step, with it from then on)
and the impostor statistics the fused score reads, in one real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oaml.train import train
from oaml.training.build import model_from_checkpoint

FUSION = {"normalize": "impostor", "adaface": 0.5, "qaconv": 0.5}


def test_weighting_switches_on_at_the_configured_step_and_statistics_are_saved(
    tiny_train_config, tmp_path: Path
) -> None:
    probe_dir, run_dir = tmp_path / "probe", tmp_path / "run"
    train(
        tiny_train_config(
            "occlusion.weighting=covisible",
            "occlusion.weighting_start_step=2",
            "trainer.max_steps=4",
            "trainer.max_epochs=2",
            "+callbacks.matcher_probe._target_=matcher_probe.RecordMatcherVisibility",
            f"+callbacks.matcher_probe.out_dir={probe_dir}",
            run_dir=run_dir,
        )
    )
    record = json.loads((probe_dir / "matcher_visibility.json").read_text())
    assert {int(step): given for step, given in record.items()} == {0: False, 1: False, 2: True, 3: True}

    # The impostor statistics of every training step travel in the checkpoint ...
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"]["score_norm.num_updates"] == 4
    assert model_from_checkpoint(checkpoint, FUSION, ["s"]).score_norm.ready
    # ... and a checkpoint written before they existed still loads (its fused score uses the fixed weights).
    checkpoint["state_dict"] = {
        k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("score_norm.")
    }
    assert not model_from_checkpoint(checkpoint, FUSION, ["s"]).score_norm.ready


def test_negative_start_step_names_the_key() -> None:
    from oaml.training.module import OAMLModule

    with pytest.raises(ValueError, match="occlusion.weighting_start_step"):
        OAMLModule(*[torch.nn.Identity()] * 5, loss_weights={}, weighting_start_step=-1)


@pytest.mark.parametrize("source", ["target", "predicted"])
def test_erasure_in_training_follows_the_configured_source(tiny_train_config, tmp_path: Path, source) -> None:
    """occlusion.erase_source=target: the body reads every training image (main and mask stream) erased by
    its known visibility; predicted: by the head's map, which on a fresh head is not the target."""
    probe_dir = tmp_path / "probe"
    train(
        tiny_train_config(
            "occlusion.erase=true",
            f"occlusion.erase_source={source}",
            "trainer.max_steps=2",
            "+callbacks.erasure_probe._target_=matcher_probe.RecordErasure",
            f"+callbacks.erasure_probe.out_dir={probe_dir}",
            run_dir=tmp_path / "run",
        )
    )
    record = json.loads((probe_dir / "erasure.json").read_text())
    assert len(record) == 2 and all(v == (source == "target") for v in record.values()), record


def test_val_erase_reaches_the_model(tiny_train_config) -> None:
    from oaml.training.build import build_model

    for erase in ("own", "pair"):
        cfg = tiny_train_config("occlusion.erase=true", f"val.erase={erase}")
        assert build_model(cfg, num_classes=4, val_set_names=["s"]).val_erasure == erase


def test_erasure_needs_a_trained_head(tiny_train_config) -> None:
    """An untrained OcclusionHead would erase arbitrary cells: loss.occlusion=0 with erasure is refused, and
    data without any visibility target switch erasure off, in the model and in what its checkpoint rebuilds."""
    from oaml.errors import ConfigError
    from oaml.training.build import build_model

    with pytest.raises(ConfigError, match="loss.occlusion"):
        build_model(tiny_train_config("occlusion.erase=true", "loss.occlusion=0"), 4, ["s"])
    model = build_model(tiny_train_config("occlusion.erase=true"), 4, ["s"], occlusion_supervised=False)
    assert not model.backbone.occlusion_erase and not model.checkpoint_info["backbone"]["occlusion_erase"]
    model = build_model(tiny_train_config("occlusion.erase=true"), 4, ["s"])
    assert model.backbone.occlusion_erase and model.checkpoint_info["backbone"]["occlusion_erase"]
