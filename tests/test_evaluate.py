"""The evaluation entry point reproduces the validation numbers of training from the checkpoint alone."""

from __future__ import annotations

import io
import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_evaluate_config
from omegaconf import OmegaConf
from PIL import Image

from oaml.data.synthetic.datasets import SyntheticPairs
from oaml.evaluate import evaluate
from oaml.train import train
from oaml.training.build import inherit_val_protocol

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
    return compose_evaluate_config(ckpt, run_dir, [*VAL_OVERRIDES, *overrides])


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


def test_weighting_override_changes_only_the_visibility_aware_qaconv_score(
    tiny_train_config, tmp_path
) -> None:
    train(tiny_train_config("occlusion.weighting=none", "print_metrics=false", run_dir=tmp_path / "train"))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    as_trained = evaluate(_evaluate_config(ckpt, tmp_path / "as_trained", "print_metrics=false"))
    weighted = evaluate(
        _evaluate_config(ckpt, tmp_path / "product", "print_metrics=false", "weighting=product")
    )
    for name in ("synthetic", "synthetic_occluded"):
        # Trained with none, the qaconv score ignored visibility; with product it uses the predicted maps.
        assert as_trained[f"val/{name}/qaconv_threshold"] == as_trained[f"val/{name}/qaconv_novis_threshold"]
        assert weighted[f"val/{name}/qaconv_threshold"] != weighted[f"val/{name}/qaconv_novis_threshold"]
        for score in ("adaface", "qaconv_novis"):
            assert weighted[f"val/{name}/{score}_threshold"] == as_trained[f"val/{name}/{score}_threshold"]
    with pytest.raises(ValueError, match="weighting='products' is not a QAConv weighting"):
        evaluate(_evaluate_config(ckpt, tmp_path / "bad", "weighting=products"))


def _grey_bin(path: Path, num_pairs: int = 20) -> Path:
    """An InsightFace-style .bin of grey faces (PNG-encoded, pickled (images, issame)) like ../shared/realfaces'."""
    pairs = SyntheticPairs(num_pairs=num_pairs, num_identities=8, seed=3)
    encoded = []
    for index in range(len(pairs)):
        image = pairs[index][0].permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(image).convert("L").convert("RGB").save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    path.write_bytes(pickle.dumps((encoded, [bool(flag) for flag in pairs.issame]), protocol=2))
    return path


def test_evaluate_scores_the_occluded_twins_the_run_validated_on(tiny_train_config, tmp_path: Path) -> None:
    # A run on grey faces with grey occluders in its occluded twin (as experiment=real_faces_dev): evaluation
    # must score the same twin without being told again, and the command line must still be able to change it.
    grey = _grey_bin(tmp_path / "grey.bin")
    val = [f"val.bin={grey}", f"val.cache_dir={tmp_path / 'cache'}", "data.val_batch_size=40"]
    trained = train(
        tiny_train_config(
            *val, "val.occluder_match_grayscale=true", "print_metrics=false", run_dir=tmp_path / "t"
        )
    )
    ckpt = tmp_path / "t" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["oaml"]["val_protocol"] == {"occluder_match_grayscale": True}
    overrides = [*val, "data.num_workers=0", "print_metrics=false"]
    inherited = evaluate(compose_evaluate_config(ckpt, tmp_path / "inherited", overrides))
    assert inherited == pytest.approx({k: v for k, v in trained.items() if k.startswith("val/")}, abs=1e-6)
    coloured = evaluate(
        compose_evaluate_config(
            ckpt, tmp_path / "coloured", [*overrides, "val.occluder_match_grayscale=false"]
        )
    )
    # Same pairs, same clean faces: only the occluders' colour differs, so only the occluded twin's scores move.
    for key, value in inherited.items():
        if key.startswith("val/grey/"):
            assert coloured[key] == pytest.approx(value, abs=1e-6), key
    moved = [
        k
        for k, v in inherited.items()
        if k.startswith("val/grey_occluded/") and coloured[k] != pytest.approx(v)
    ]
    assert "val/grey_occluded/occ_mse" in moved or "val/grey_occluded/occ_iou" in moved, moved


def test_val_protocol_comes_from_the_checkpoint_unless_given(caplog) -> None:
    stored = {"oaml": {"val_protocol": {"occluder_match_grayscale": True}}}
    val = OmegaConf.create({"occluder_match_grayscale": None})
    assert inherit_val_protocol(val, stored) == {"occluder_match_grayscale": True}
    assert val.occluder_match_grayscale is True
    # the command line wins over the checkpoint
    forced = OmegaConf.create({"occluder_match_grayscale": False})
    assert inherit_val_protocol(forced, stored) == {"occluder_match_grayscale": False}
    # an older checkpoint without the protocol: the default, and a warning naming the key to give
    old = OmegaConf.create({"occluder_match_grayscale": None})
    with caplog.at_level(logging.WARNING, logger="oaml.training.build"):
        assert inherit_val_protocol(old, {"oaml": {}}) == {"occluder_match_grayscale": False}
    assert "val.occluder_match_grayscale" in caplog.text and "older OAML" in caplog.text
