"""Export: a real OAML-format checkpoint of ir_nano -> ONNX (run by onnxruntime) and TorchScript, same outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oaml.export import export, load_backbone_from_checkpoint
from oaml.models import AdaFace, build_backbone

REPO = Path(__file__).resolve().parents[2]
BACKBONE_CFG = {
    "_target_": "oaml.models.build_backbone",
    "name": "ir_nano",
    "input_size": 112,
    "embedding_size": 64,
    "occlusion_hidden_channels": 16,
    "occlusion_detach_features": True,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A checkpoint in the OAML Lightning layout: backbone.* and head.* weights plus the backbone's config."""
    torch.manual_seed(0)
    backbone = build_backbone("ir_nano", embedding_size=64, occlusion_hidden_channels=16)
    with torch.no_grad():  # trained-looking BN statistics, so a missed buffer would change the outputs
        for name, tensor in backbone.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.2)
    backbone.eval()
    head = AdaFace(embedding_size=64, num_classes=10)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    path = tmp_path_factory.mktemp("run") / "best.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "oaml": {"backbone": dict(BACKBONE_CFG)}}, path)
    return path, backbone


def reference(backbone: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        embedding, norm, visibility, _ = backbone(x, return_occlusion=True)
    return [t.numpy() for t in (embedding, norm, visibility)]


def test_onnx_export_matches_pytorch(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    ort = pytest.importorskip("onnxruntime")
    path, backbone = checkpoint
    out = export({"ckpt": str(path), "format": "onnx"})
    assert out == path.with_name("best.onnx") and out.is_file()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding", "norm", "visibility"]
    x = torch.randn(3, 3, 112, 112)  # batch 3: the traced example had 2, the batch axis is dynamic
    outputs = session.run(None, {"images": x.numpy()})
    expected = reference(backbone, x)
    assert [o.shape for o in outputs] == [(3, 64), (3, 1), (3, 1, 7, 7)]
    np.testing.assert_allclose(outputs[0], expected[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(outputs[1], expected[1], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(outputs[2], expected[2], atol=1e-4, rtol=0)

    with pytest.raises(FileExistsError, match="best.onnx"):
        export({"ckpt": str(path), "format": "onnx"})


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch(checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, backbone = checkpoint
    out = export({"ckpt": str(path), "format": "torchscript", "out": str(tmp_path / "nano.pt")})
    scripted = torch.jit.load(str(out))
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        outputs = [t.numpy() for t in scripted(x)]
    for got, want in zip(outputs, reference(backbone, x)):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_checkpoint_errors(tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_backbone_from_checkpoint(tmp_path / "missing.ckpt")
    path, backbone = checkpoint
    no_cfg = tmp_path / "no_cfg.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, no_cfg)
    with pytest.raises(ValueError, match=r"checkpoint\['oaml'\]\['backbone'\]"):
        load_backbone_from_checkpoint(no_cfg)
    wrong = tmp_path / "wrong.ckpt"
    cfg = {**BACKBONE_CFG, "embedding_size": 32}
    torch.save({"state_dict": torch.load(path)["state_dict"], "oaml": {"backbone": cfg}}, wrong)
    with pytest.raises(ValueError, match="do not fit the configured backbone"):
        load_backbone_from_checkpoint(wrong)
    with pytest.raises(ValueError, match="format must be one of"):
        export({"ckpt": str(path), "format": "tflite"})


def test_cli(checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = checkpoint
    out = tmp_path / "cli.torchscript.pt"
    result = subprocess.run(
        [sys.executable, "-m", "oaml.export", f"ckpt={path}", "format=torchscript", f"out={out}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and str(out) in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.torchscript.pt"]  # no run dir, no logs left
