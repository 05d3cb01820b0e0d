"""The evaluation entry point reproduces the validation numbers of training from the checkpoint alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from oaml.evaluate import evaluate
from oaml.train import train

VAL_OVERRIDES = [
    "val.sets.synthetic.num_pairs=40",
    "val.sets.synthetic.num_identities=16",
    "val.sets.synthetic_occluded.num_pairs=40",
    "val.sets.synthetic_occluded.num_identities=16",
    "data.val_batch_size=40",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
]


def _evaluate_config(ckpt: Path, run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[f"ckpt={ckpt}", *VAL_OVERRIDES, *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize(
    "max_steps,seed", [(3, 42), (2, 42), (3, 7)], ids=["stops-at-epoch-end", "stops-mid-epoch", "other-seed"]
)
def test_evaluate_reproduces_training_validation(
    tiny_train_config, tmp_path: Path, max_steps: int, seed: int
) -> None:
    # Mid-epoch, no scheduled validation sees the final weights: training must validate them itself.
    # The validation protocol has its own seed (val.seed): the training seed does not change the pairs.
    trained = train(
        tiny_train_config(f"trainer.max_steps={max_steps}", f"seed={seed}", run_dir=tmp_path / "train")
    )
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    evaluated = evaluate(_evaluate_config(ckpt, tmp_path / "eval"))
    expected = {k: v for k, v in trained.items() if k.startswith("val/")}
    assert evaluated == pytest.approx(expected, abs=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == pytest.approx(evaluated)


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate(_evaluate_config(missing, tmp_path / "eval"))


def test_evaluate_cli_prints_table(tiny_train_config, tmp_path: Path) -> None:
    train(tiny_train_config(run_dir=tmp_path / "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "oaml.evaluate",
            f"ckpt={ckpt}",
            *VAL_OVERRIDES,
            f"hydra.run.dir={tmp_path / 'ev'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Evaluation of" in result.stdout and "synthetic_occluded" in result.stdout
    assert (tmp_path / "ev" / "metrics.json").is_file()
