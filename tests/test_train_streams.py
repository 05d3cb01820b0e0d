"""Training on files in the real layouts: image folders, the niqab mask stream, pair lists and .bin sets."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose_evaluate_config

from oaml.data.synthetic.export import export_synthetic
from oaml.evaluate import evaluate
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


class RecordBatches(pl.Callback):
    """Writes, per training step, the streams of the batch and their sizes (added through the config)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            self.steps.append({name: int(stream[0].shape[0]) for name, stream in batch.items()})
        else:
            self.steps.append({"main": int(batch[0].shape[0])})

    def on_train_end(self, trainer, pl_module) -> None:
        with open(self.path, "w") as handle:
            json.dump(self.steps, handle)


def _record(tmp_path) -> list[str]:
    return [
        "+callbacks.batches._target_=test_train_streams.RecordBatches",
        f"+callbacks.batches.path={tmp_path / 'batches.json'}",
    ]


def test_two_streams_image_folder_with_niqab_masks(tiny_train_config, exported, tmp_path) -> None:
    cfg = tiny_train_config(
        "data=image_folder",
        f"data.train.root={exported / 'identities'}",
        "data.train.transform=null",  # main-stream visibility is then a placeholder: masks come from the set
        "data.batch_size=16",
        "data.num_workers=0",
        "data.mask_batch_size=8",
        "masks=niqab",
        f"data.masks.root={exported / 'niqab'}",
        f"val.pairs={exported / 'pairs' / 'pairs.txt'}",
        *_record(tmp_path),
        run_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    # Every step concatenated 16 main-stream and 8 mask-stream faces.
    steps = json.loads((tmp_path / "batches.json").read_text())
    assert steps == [{"main": 16, "masks": 8}] * 3
    # Both the pair list and its occluded twin were scored; best.ckpt followed the pair list by default.
    assert 0.0 <= metrics["val/pairs/adaface_acc"] <= 1.0
    assert 0.0 <= metrics["val/pairs_occluded/qaconv_acc"] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    # The occlusion loss comes from the mask stream alone and is part of the total.
    total = (
        cfg.loss.adaface * metrics["train/loss_adaface"]
        + cfg.loss.qaconv * metrics["train/loss_qaconv"]
        + cfg.loss.occlusion * metrics["train/loss_occlusion"]
    )
    assert metrics["train/loss_occlusion"] > 0.0
    assert metrics["train/loss"] == pytest.approx(total, rel=1e-5)
    # The niqab set's held-out faces (2 of 24) scored the OcclusionHead on real masks, by the one scorer
    # that oaml.evaluate reproduces from the checkpoint alone.
    niqab = {k: v for k, v in metrics.items() if k.startswith("val/niqab/")}
    assert set(niqab) >= {"val/niqab/occ_mse", "val/niqab/visibility_occluded"}
    evaluated = evaluate(
        compose_evaluate_config(
            tmp_path / "run" / "checkpoints" / "last.ckpt",
            tmp_path / "eval",
            [
                f"val.pairs={exported / 'pairs' / 'pairs.txt'}",
                "masks=niqab",
                f"data.masks.root={exported / 'niqab'}",
            ]
            + ["data.num_workers=0", "trainer.enable_progress_bar=false"],
        )
    )
    assert {k: v for k, v in evaluated.items() if k.startswith("val/niqab/")} == pytest.approx(
        niqab, abs=1e-6
    )


def test_a_mask_set_smaller_than_one_batch_is_an_error(tiny_train_config, exported, tmp_path) -> None:
    cfg = tiny_train_config(
        "data=image_folder",
        f"data.train.root={exported / 'identities'}",
        "data.num_workers=0",
        "data.mask_batch_size=64",
        "masks=niqab",
        f"data.masks.root={exported / 'niqab'}",
        run_dir=tmp_path / "run",
    )
    with pytest.raises(ValueError, match="data.mask_batch_size=64"):
        train(cfg)


def test_a_mask_stream_longer_than_the_main_stream_does_not_repeat_main_batches(
    tiny_train_config, exported, tmp_path
) -> None:
    # 12 identities / 4 per batch: 3 main batches; 24 niqab + 6 clean faces / 2 per batch: 15 mask batches.
    cfg = tiny_train_config(
        "data=image_folder",
        f"data.train.root={exported / 'identities'}",
        "data.num_workers=0",
        "data.mask_batch_size=2",
        "masks=niqab",
        f"data.masks.root={exported / 'niqab'}",
        f"val.pairs={exported / 'pairs' / 'pairs.txt'}",  # 40 pairs, not the 600 + 600 synthetic default
        "trainer.max_steps=-1",
        *_record(tmp_path),
        run_dir=tmp_path / "run",
    )
    train(cfg)
    steps = json.loads((tmp_path / "batches.json").read_text())
    assert len(steps) == 3  # the main stream's length defines the epoch


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
        run_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert "occlusion loss off" in caplog.text
    assert metrics["train/loss_occlusion"] == 0.0
    assert metrics["train/loss"] == pytest.approx(
        0.1 * metrics["train/loss_adaface"] + 0.9 * metrics["train/loss_qaconv"], rel=1e-5
    )
    assert "val/synthetic_val_occluded/fused_acc" in metrics


def test_a_monitor_that_names_no_val_set_fails_before_training(tiny_train_config, tmp_path) -> None:
    with pytest.raises(ValueError, match="val.monitor='val/lfw/fused_acc' names no validation set"):
        train(tiny_train_config("val.monitor=val/lfw/fused_acc", run_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_placeholder_main_visibility_never_reaches_the_occlusion_loss(tiny_train_config) -> None:
    from oaml.training.build import build_model

    cfg = tiny_train_config(
        "loss.adaface=0", "loss.qaconv=0", "loss.occlusion=1", "loss.occlusion_loss.kind=mse"
    )
    model = build_model(cfg, num_classes=4, val_set_names=[], main_visibility_known=False)
    main = (torch.randn(8, 3, 112, 112), torch.arange(4).repeat_interleave(2), torch.ones(8, 1, 112, 112))
    masks = (torch.randn(4, 3, 112, 112), torch.zeros(4, 1, 7, 7))
    loss = model.training_step({"main": main, "masks": masks}, 0)
    # The same forward (train-mode BatchNorm over the concatenated batch) gives the predictions it scored.
    with torch.no_grad():
        predicted = model.backbone(torch.cat([main[0], masks[0]]), return_occlusion=True)[2]
    assert loss.item() == pytest.approx(torch.mean(predicted[8:] ** 2).item(), rel=1e-4)  # mask targets only
    assert loss.item() != pytest.approx(
        torch.mean(torch.cat([(1 - predicted[:8]) ** 2, predicted[8:] ** 2])).item(), rel=1e-3
    )
