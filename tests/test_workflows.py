"""End-to-end workflows across entry points: train -> export, multirun sweeps, console scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from conftest import REPO, TINY_OVERRIDES

from oaml.export import export
from oaml.train import train
from oaml.training.build import model_from_checkpoint
from oaml.training.checkpoint import load_checkpoint


def test_a_trained_checkpoint_exports_to_onnx_with_matching_outputs(
    tiny_train_config, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    train(tiny_train_config(run_dir=run_dir))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    onnx_path = export({"ckpt": str(ckpt), "format": "onnx", "out": str(tmp_path / "model.onnx")})

    backbone = model_from_checkpoint(
        load_checkpoint(ckpt), {"adaface": 0.5, "qaconv": 0.5}, []
    ).backbone.eval()
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        embedding, norm, visibility, _ = backbone(images, return_occlusion=True)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {session.get_inputs()[0].name: images.numpy()}),
        )
    )
    np.testing.assert_allclose(outputs["embedding"], embedding.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["norm"], norm.numpy(), rtol=1e-4)
    np.testing.assert_allclose(outputs["visibility"], visibility.numpy(), atol=1e-4)


def test_multirun_sweep_gives_each_point_its_own_run_dir(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "oaml.train",
            "--multirun",
            *TINY_OVERRIDES,
            "trainer.max_steps=2",
            "loss.occlusion=0.05,0.2",
            "occlusion.weighting=pooled",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = []
    for job in ("0", "1"):
        config = (sweep_dir / job / ".hydra" / "config.yaml").read_text()
        assert "weighting: pooled" in config
        weights.append("occlusion: 0.05" in config or "occlusion: 0.2" in config)
        metrics = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert "val/synthetic_occluded/qaconv_acc" in metrics
    assert all(weights)


def test_console_scripts_behave_like_the_modules() -> None:
    bindir = Path(sys.executable).parent
    for script, module in (("oaml-train", "oaml.train"), ("oaml-evaluate", "oaml.evaluate")):
        executable = shutil.which(script, path=str(bindir)) or shutil.which(script)
        assert executable, f"{script} is not installed (pip install -e .)"
        extra = ["ckpt=/x.ckpt"] if script == "oaml-evaluate" else []
        by_script = subprocess.run(
            [executable, "--cfg", "job", *extra], capture_output=True, text=True, timeout=120
        )
        by_module = subprocess.run(
            [sys.executable, "-m", module, "--cfg", "job", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert by_script.returncode == 0, by_script.stderr[-2000:]
        assert by_script.stdout == by_module.stdout
