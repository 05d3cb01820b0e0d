"""AdaFace checkpoint import: a checkpoint in AdaFace's exact on-disk format round-trips into our modules, and
our IResNet computes what AdaFace's published layout computes from such a state dict."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from oaml.models import AdaFace, IResNet
from oaml.models.adaface_checkpoint import load_adaface_checkpoint, load_adaface_state

TINY = dict(units=(1, 1, 1, 1), channels=(16, 16, 32, 32), stem_channels=16, embedding_size=32)


def randomise(model: torch.nn.Module) -> None:
    """Give BN statistics and PReLU slopes non-default values so a skipped buffer would show up."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")) or ".2.weight" in name or "res_layer.3" in name:
                tensor.normal_(0.0, 0.1)


def write_adaface_ckpt(path: Path, source: IResNet, head: AdaFace | None) -> None:
    """AdaFace's release format: {'state_dict': {'model.<backbone key>': ..., 'head.<key>': ...}}."""
    state = {f"model.{k}": v for k, v in source.state_dict().items() if not k.startswith("occlusion_head.")}
    if head is not None:
        state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    torch.save({"state_dict": state}, path)


@pytest.fixture()
def source() -> IResNet:
    torch.manual_seed(1)
    model = IResNet(**TINY)
    randomise(model)
    return model.eval()


def test_backbone_and_head_load_and_embed_identically(tmp_path: Path, source: IResNet) -> None:
    torch.manual_seed(2)
    source_head = AdaFace(embedding_size=32, num_classes=7)
    source_head.batch_mean.fill_(17.5)
    source_head.batch_std.fill_(3.25)
    source_head.t.fill_(1.0)
    ckpt = tmp_path / "adaface_ir_tiny.ckpt"
    write_adaface_ckpt(ckpt, source, source_head)

    torch.manual_seed(3)
    target = IResNet(**TINY).eval()
    head = AdaFace(embedding_size=32, num_classes=7)
    occlusion_before = {k: v.clone() for k, v in target.occlusion_head.state_dict().items()}
    x = torch.randn(2, 3, 112, 112)
    expected_embedding, expected_norm = source(x)
    assert not torch.allclose(target(x)[0], expected_embedding, atol=1e-3)

    report = load_adaface_state(target, ckpt, head=head)
    embedding, norm = target(x)
    torch.testing.assert_close(embedding, expected_embedding, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(norm, expected_norm, atol=1e-5, rtol=1e-5)
    assert report.head_loaded and report.checkpoint_num_classes == 7 and report.head_message is None
    torch.testing.assert_close(head.kernel, source_head.kernel)
    assert head.batch_mean.item() == 17.5 and head.batch_std.item() == 3.25 and head.t.item() == 1.0
    assert sorted(report.missing_keys) == sorted(f"occlusion_head.{k}" for k in occlusion_before)
    assert report.unused_keys == []
    for k, v in target.occlusion_head.state_dict().items():
        torch.testing.assert_close(v, occlusion_before[k])


def test_head_class_mismatch_is_reported_not_loaded(tmp_path: Path, source: IResNet) -> None:
    ckpt = tmp_path / "a.ckpt"
    write_adaface_ckpt(ckpt, source, AdaFace(embedding_size=32, num_classes=11))
    head = AdaFace(embedding_size=32, num_classes=5)
    kernel_before = head.kernel.detach().clone()
    report = load_adaface_state(IResNet(**TINY), ckpt, head=head)
    assert not report.head_loaded and report.checkpoint_num_classes == 11
    assert "11 classes" in report.head_message
    torch.testing.assert_close(head.kernel.detach(), kernel_before)
    assert sorted(report.unused_keys) == ["head.batch_mean", "head.batch_std", "head.kernel", "head.t"]


def test_load_adaface_checkpoint_by_arch_name(tmp_path: Path) -> None:
    torch.manual_seed(4)
    # ir_nano's architecture, built independently of the registry
    source = IResNet(units=(1, 2, 1), channels=(16, 64, 128), stem_channels=16, stem_stride=2).eval()
    ckpt = tmp_path / "nano.ckpt"
    write_adaface_ckpt(ckpt, source, None)
    model = load_adaface_checkpoint(ckpt, "ir_nano")
    assert not model.training
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(model(x)[0], source(x)[0], atol=1e-6, rtol=1e-5)


def test_wrong_arch_missing_file_and_wrong_format(tmp_path: Path, source: IResNet) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    write_adaface_ckpt(ckpt, source, None)
    with pytest.raises(ValueError, match=r"arch='ir_18'.*\d+ backbone keys missing, e\.g\. 'model\.body\."):
        load_adaface_checkpoint(ckpt, "ir_18")  # IR-18 has 8 units, the checkpoint 4
    at_224 = IResNet(**TINY, input_size=224)  # the Linear after the 14x14 map is 4x wider
    with pytest.raises(
        ValueError, match=r"'model\.output_layer\.3\.weight' has shape \(32, 1568\).*\(32, 6272\)"
    ):
        load_adaface_state(at_224, ckpt)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_adaface_state(source, tmp_path / "nope.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="no 'model.\\*' backbone keys"):
        load_adaface_state(source, other)


def test_se_checkpoint_into_plain_ir_model_is_rejected(tmp_path: Path) -> None:
    """IR-SE weights in an IR model would lose every SE block silently: name a key and the fix."""
    torch.manual_seed(5)
    se_source = IResNet(**{**TINY, "se": True})
    ckpt = tmp_path / "ir_se_tiny.ckpt"
    write_adaface_ckpt(ckpt, se_source, None)
    with pytest.raises(
        ValueError, match=r"'model\.body\.\d+\.res_layer\.se_block\.fc\d\.weight'.*arch=ir_se50"
    ):
        load_adaface_state(IResNet(**TINY), ckpt)
    report = load_adaface_state(IResNet(**{**TINY, "se": True}), ckpt)  # the right arch loads
    assert report.unused_keys == []


def test_extra_backbone_key_is_rejected_and_other_keys_are_reported(tmp_path: Path, source: IResNet) -> None:
    state = {f"model.{k}": v for k, v in source.state_dict().items() if not k.startswith("occlusion_head.")}
    extra_backbone = tmp_path / "extra_backbone.ckpt"
    torch.save({"state_dict": {**state, "model.body.9.res_layer.0.weight": torch.ones(4)}}, extra_backbone)
    with pytest.raises(
        ValueError, match=r"1 checkpoint backbone keys.*'model\.body\.9\.res_layer\.0\.weight'"
    ):
        load_adaface_state(IResNet(**TINY), extra_backbone)
    extra_other = tmp_path / "extra_other.ckpt"
    torch.save(
        {"state_dict": {**state, "ema.step": torch.zeros(1), "model.occlusion_head.x": torch.ones(1)}},
        extra_other,
    )
    report = load_adaface_state(IResNet(**TINY), extra_other)
    assert sorted(report.unused_keys) == ["ema.step", "model.occlusion_head.x"]


def test_load_adaface_checkpoint_logs_its_report(
    tmp_path: Path, source: IResNet, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(6)
    nano = IResNet(units=(1, 2, 1), channels=(16, 64, 128), stem_channels=16, stem_stride=2)
    state = {f"model.{k}": v for k, v in nano.state_dict().items() if not k.startswith("occlusion_head.")}
    state.update({f"head.{k}": v for k, v in AdaFace(embedding_size=512, num_classes=3).state_dict().items()})
    state["extra.entry"] = torch.zeros(1)
    ckpt = tmp_path / "nano.ckpt"
    torch.save({"state_dict": state}, ckpt)
    with caplog.at_level(logging.INFO, logger="oaml.models.adaface_checkpoint"):
        load_adaface_checkpoint(ckpt, "ir_nano")
    text = caplog.text
    assert "occlusion_head.conv1.weight" in text  # missing keys: kept at their initialisation
    assert "extra.entry" in text and "head.kernel" in text  # unused keys
    assert "no head given" in text
    assert any(r.levelno == logging.WARNING and "extra.entry" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- an independent functional reference


def _bn(x: Tensor, state: dict[str, Tensor], prefix: str, affine: bool = True) -> Tensor:
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"] if affine else None,
        state[f"{prefix}.bias"] if affine else None,
        training=False,
        eps=1e-5,
    )


def adaface_reference_forward(
    state: dict[str, Tensor], units: Sequence[int], se: bool, x: Tensor
) -> tuple[Tensor, Tensor]:
    """AdaFace's IR/IR-SE backbone (``net.py``) written as plain functions of its state dict, eval mode.

    input_layer: conv3x3 (stride 1, pad 1) -> BN -> PReLU. Each unit: res_layer = BN, conv3x3, BN, PReLU,
    conv3x3 (stride 2 on the first unit of every stage), BN, [SE: global average pool, 1x1 conv, ReLU,
    1x1 conv, sigmoid, multiply]; shortcut = MaxPool2d(1, stride) (every stride-th pixel) when the channels
    stay, else conv1x1(stride) -> BN; output = res + shortcut. output_layer: BN2d -> (Dropout) -> flatten ->
    Linear -> BatchNorm1d without affine. Returns the L2-normalised embedding and its norm.
    """
    x = F.conv2d(x, state["input_layer.0.weight"], stride=1, padding=1)
    x = F.prelu(_bn(x, state, "input_layer.1"), state["input_layer.2.weight"])
    index = 0
    for num_units in units:
        for unit in range(num_units):
            stride = 2 if unit == 0 else 1
            p = f"body.{index}"
            r = _bn(x, state, f"{p}.res_layer.0")
            r = F.conv2d(r, state[f"{p}.res_layer.1.weight"], stride=1, padding=1)
            r = F.prelu(_bn(r, state, f"{p}.res_layer.2"), state[f"{p}.res_layer.3.weight"])
            r = F.conv2d(r, state[f"{p}.res_layer.4.weight"], stride=stride, padding=1)
            r = _bn(r, state, f"{p}.res_layer.5")
            if se:
                g = r.mean(dim=(2, 3), keepdim=True)
                g = F.relu(F.conv2d(g, state[f"{p}.res_layer.se_block.fc1.weight"]))
                r = r * torch.sigmoid(F.conv2d(g, state[f"{p}.res_layer.se_block.fc2.weight"]))
            if f"{p}.shortcut_layer.0.weight" in state:
                shortcut = F.conv2d(x, state[f"{p}.shortcut_layer.0.weight"], stride=stride)
                shortcut = _bn(shortcut, state, f"{p}.shortcut_layer.1")
            else:
                shortcut = x[:, :, ::stride, ::stride]
            x = r + shortcut
            index += 1
    x = _bn(x, state, "output_layer.0").flatten(1)
    x = F.linear(x, state["output_layer.3.weight"], state["output_layer.3.bias"])
    x = _bn(x, state, "output_layer.4", affine=False)
    norm = x.norm(dim=1, keepdim=True)
    return x / norm, norm


@pytest.mark.parametrize("se", [False, True])
def test_iresnet_equals_functional_reference_of_adaface_layout(se: bool) -> None:
    units = (2, 1, 1, 1)  # a stride-1 unit too, and both shortcut kinds (16 -> 16 pools, 16 -> 32 convs)
    torch.manual_seed(7)
    model = IResNet(units=units, channels=(16, 16, 32, 32), stem_channels=16, se=se, embedding_size=24)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0.0, 0.2)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.05, 0.5)
    model.eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("occlusion_head.")}
    assert any("se_block" in k for k in state) == se
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(8))
    expected_embedding, expected_norm = adaface_reference_forward(state, units, se, x)
    with torch.no_grad():
        embedding, norm = model(x)
    torch.testing.assert_close(embedding, expected_embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm, expected_norm, atol=1e-4, rtol=1e-5)
