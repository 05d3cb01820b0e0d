"""`model.init_from=PATH` starts training from a checkpoint in AdaFace's released format."""

from __future__ import annotations

import logging

import torch

from oaml.models import AdaFace, build_backbone
from oaml.training.build import build_model


def _write_adaface_ckpt(path, num_classes: int) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(123)
    backbone = build_backbone("ir_nano")
    head = AdaFace(embedding_size=512, num_classes=num_classes)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("occlusion_head.")}
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    torch.save({"state_dict": state}, path)
    return backbone.state_dict(), head.kernel.detach().clone()


def test_init_from_takes_backbone_and_matching_head(tiny_train_config, tmp_path, caplog) -> None:
    ckpt = tmp_path / "adaface.ckpt"
    expected_backbone, expected_kernel = _write_adaface_ckpt(ckpt, num_classes=12)
    cfg = tiny_train_config(f"model.init_from={ckpt}")
    with caplog.at_level(logging.INFO):
        model = build_model(cfg, num_classes=12, val_set_names=[])
    loaded = model.backbone.state_dict()
    for key, value in expected_backbone.items():
        if not key.startswith("occlusion_head."):
            assert torch.equal(loaded[key], value), key
    assert torch.equal(model.margin_head.kernel, expected_kernel)
    assert "Took the AdaFace head" in caplog.text
    assert "occlusion_head.conv1.weight" in caplog.text  # reported as new


def test_init_from_reports_a_head_of_another_class_count(tiny_train_config, tmp_path, caplog) -> None:
    ckpt = tmp_path / "adaface.ckpt"
    expected_backbone, expected_kernel = _write_adaface_ckpt(ckpt, num_classes=30)
    model = build_model(tiny_train_config(f"model.init_from={ckpt}"), num_classes=12, val_set_names=[])
    assert torch.equal(
        model.backbone.state_dict()["output_layer.3.weight"], expected_backbone["output_layer.3.weight"]
    )
    assert model.margin_head.kernel.shape == (512, 12)
    assert "head not loaded" in caplog.text and "30 classes" in caplog.text


def test_a_bad_init_from_is_a_user_error_naming_the_key(tiny_train_config, tmp_path) -> None:
    """Entry points print user errors as one line (oaml.errors): a missing or foreign file must be one."""
    import pytest

    from oaml.errors import UserError

    with pytest.raises(UserError, match=r"model.init_from.*nope\.ckpt"):
        build_model(tiny_train_config(f"model.init_from={tmp_path / 'nope.ckpt'}"), 4, ["s"])
    torch.save({"state_dict": {"something.else": torch.zeros(1)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match=r"model.init_from=.*foreign\.ckpt"):
        build_model(tiny_train_config(f"model.init_from={tmp_path / 'foreign.ckpt'}"), 4, ["s"])
