"""AdaFace checkpoint import: a checkpoint in AdaFace's exact on-disk format round-trips into our modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
