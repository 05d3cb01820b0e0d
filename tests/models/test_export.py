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
    # Most visibility cells are away from the saturated ends (the head has its own init), so the visibility
    # comparison below can fail.
    assert ((expected[2] > 0.05) & (expected[2] < 0.99)).mean() > 0.5
    assert expected[2].std() > 10 * 1e-4
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


def test_crafted_backbone_target_is_refused_without_side_effect(
    tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]
) -> None:
    """A checkpoint is a file from somewhere: its config must not run arbitrary code when instantiated."""
    path, _ = checkpoint
    state = torch.load(path)["state_dict"]
    marker = tmp_path / "pwned"
    payload = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": state, "oaml": {"backbone": payload}}, crafted)
    with pytest.raises(ValueError, match=r"\['_target_'\] = 'pathlib\.Path\.touch'.*trusted=true"):
        load_backbone_from_checkpoint(crafted)
    with pytest.raises(ValueError, match="pathlib.Path.touch"):
        export({"ckpt": str(crafted), "format": "onnx", "out": str(tmp_path / "x.onnx")})
    # hidden one level down, where Hydra's recursive instantiation would reach it
    nested = tmp_path / "nested.ckpt"
    torch.save(
        {"state_dict": state, "oaml": {"backbone": {**BACKBONE_CFG, "embedding_size": payload}}}, nested
    )
    with pytest.raises(ValueError, match=r"embedding_size\._target_"):
        load_backbone_from_checkpoint(nested)
    assert not marker.exists()
    # The payload is real: with trusted=true Hydra runs it (and the result is then rejected as no IResNet).
    with pytest.raises(ValueError, match="not an IResNet"):
        load_backbone_from_checkpoint(crafted, trusted=True)
    assert marker.exists()


def test_allowed_targets_build_the_backbone(tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, backbone = checkpoint
    state = torch.load(path)["state_dict"]
    direct = {
        "_target_": "oaml.models.iresnet.IResNet",
        "units": [1, 2, 1],
        "channels": [16, 64, 128],
        "stem_channels": 16,
        "stem_stride": 2,
        "embedding_size": 64,
        "occlusion_hidden_channels": 16,
    }
    ckpt = tmp_path / "direct.ckpt"
    torch.save({"state_dict": state, "oaml": {"backbone": direct}}, ckpt)
    loaded = load_backbone_from_checkpoint(ckpt)
    x = torch.randn(1, 3, 112, 112)
    for got, want in zip(reference(loaded, x), reference(backbone, x)):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    bad_args = tmp_path / "bad_args.ckpt"
    torch.save({"state_dict": state, "oaml": {"backbone": {**BACKBONE_CFG, "depth": 3}}}, bad_args)
    with pytest.raises(ValueError, match="does not fit oaml.models.build_backbone.*depth"):
        load_backbone_from_checkpoint(bad_args)


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
