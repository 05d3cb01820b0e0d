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
