"""Training on files in the real layouts: image folders, the niqab mask stream, pair lists and .bin sets."""

from __future__ import annotations

import pytest

from oaml.data.export_synthetic import export_synthetic
from oaml.train import train


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    export_synthetic(
        root / "data",
        num_identities=12,
        images_per_identity=4,
        num_pairs=40,
        pair_identities=16,
        num_niqab=24,
        seed=3,
    )
    return root / "data"


def test_two_streams_image_folder_with_niqab_masks(tiny_train_config, exported, tmp_path) -> None:
    cfg = tiny_train_config(
        "data=image_folder",
        f"data.train.root={exported / 'identities'}",
        "data.batch_size=16",
        "data.num_workers=0",
        "data.mask_batch_size=8",
        "masks=niqab",
        f"data.masks.root={exported / 'niqab'}",
        f"val.pairs={exported / 'pairs' / 'pairs.txt'}",
        "val.monitor=val/pairs/fused_acc",
        run_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    # Both the pair list and its occluded twin were scored.
    assert 0.0 <= metrics["val/pairs/adaface_acc"] <= 1.0
    assert 0.0 <= metrics["val/pairs_occluded/qaconv_acc"] <= 1.0
    assert metrics["val/pairs_occluded/visibility_occluded"] < metrics["val/pairs/visibility_clean"] + 1.0
    # The occlusion loss is on and part of the total.
    total = (
        0.1 * metrics["train/loss_adaface"]
        + 0.9 * metrics["train/loss_qaconv"]
        + 0.1 * metrics["train/loss_occlusion"]
    )
    assert metrics["train/loss_occlusion"] > 0.0
    assert metrics["train/loss"] == pytest.approx(total, rel=1e-5)


def test_without_visibility_targets_the_occlusion_loss_is_off(
    tiny_train_config, exported, tmp_path, caplog
) -> None:
    cfg = tiny_train_config(
        "data=image_folder",
        f"data.train.root={exported / 'identities'}",
        "data.train.transform=null",
        "data.batch_size=16",
        "data.num_workers=0",
        f"val.bin={exported / 'synthetic_val.bin'}",
        "val.monitor=val/synthetic_val/fused_acc",
        run_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert "occlusion loss off" in caplog.text
    assert metrics["train/loss"] == pytest.approx(
        0.1 * metrics["train/loss_adaface"] + 0.9 * metrics["train/loss_qaconv"], rel=1e-5
    )
    assert "val/synthetic_val_occluded/fused_acc" in metrics
