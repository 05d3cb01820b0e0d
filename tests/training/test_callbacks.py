"""VisibilityImageLogger: the overlay on hand-made maps, then the real training entry point writing the grid."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from oaml.data.pipeline.normalize import normalize_faces
from oaml.evaluation.scoring import embed_faces
from oaml.train import train
from oaml.training.build import model_from_checkpoint
from oaml.training.callbacks import VisibilityImageLogger, denormalize_faces, overlay_visibility
from oaml.training.checkpoint import load_checkpoint

CALLBACK = [
    "callbacks.visibility_images.num_images=4",
]
SIZE = 112
PAD = 2  # make_grid's default padding


# ------------------------------------------------------------------------------------------- unit tests
def test_overlay_tints_hidden_pixels_and_leaves_visible_ones() -> None:
    faces = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    visibility = torch.ones(2, 1, 4, 5)
    visibility[0, 0, 1:3, 2:4] = 0.0  # a hidden block
    visibility[1, 0, 0, 0] = 0.5  # a half-visible pixel
    out = overlay_visibility(faces, visibility, alpha=0.5)

    visible = visibility.expand_as(faces) == 1.0
    assert torch.equal(out[visible], faces[visible])
    red = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(out[0, :, 1:3, 2:4], 0.5 * faces[0, :, 1:3, 2:4] + 0.5 * red.view(3, 1, 1))
    torch.testing.assert_close(out[1, :, 0, 0], 0.75 * faces[1, :, 0, 0] + 0.25 * red)
    # Red rises, green and blue fall where hidden.
    assert (out[0, 0, 1:3, 2:4] >= faces[0, 0, 1:3, 2:4]).all()
    assert (out[0, 1:, 1:3, 2:4] < faces[0, 1:, 1:3, 2:4]).all()
    assert torch.equal(overlay_visibility(faces, visibility, alpha=0.0), faces)


def test_overlay_rejects_mismatched_shapes_and_alpha() -> None:
    faces = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="upsample"):
        overlay_visibility(faces, torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        overlay_visibility(faces, torch.ones(1, 3, 8, 8))
    with pytest.raises(ValueError, match="alpha"):
        overlay_visibility(faces, torch.ones(1, 1, 8, 8), alpha=1.5)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_denormalize_undoes_normalize_in_either_channel_order(order: str) -> None:
    images = torch.randint(
        0, 256, (2, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    restored = denormalize_faces(normalize_faces(images, order), order)
    assert torch.equal(restored.mul(255).round().to(torch.uint8), images)
    if order == "bgr":  # read with the wrong order, red and blue swap
        wrong = denormalize_faces(normalize_faces(images, "bgr"), "rgb")
        assert torch.equal(wrong.mul(255).round().to(torch.uint8), images.flip(1))


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_images"):
        VisibilityImageLogger(num_images=0)
    with pytest.raises(ValueError, match="every_n_validations"):
        VisibilityImageLogger(every_n_validations=0)
    with pytest.raises(ValueError, match="dataloader_idx"):
        VisibilityImageLogger(dataloader_idx=-1)
    with pytest.raises(ValueError, match="alpha"):
        VisibilityImageLogger(alpha=-0.1)


# ------------------------------------------------------------------------------ the real entry point
def _tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = PAD + row * (SIZE + PAD), PAD + col * (SIZE + PAD)
    return grid[top : top + SIZE, left : left + SIZE].astype(np.int16)  # [H, W, 3]


def _expected_overlay(faces01: torch.Tensor, visibility: torch.Tensor) -> np.ndarray:
    """The overlay recomputed here from the formula: [N, H, W, 3] uint8 values as int16."""
    weight = 0.5 * (1.0 - visibility)  # alpha 0.5, tint red
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    out = faces01 * (1.0 - weight) + red * weight
    return out.mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.int16)


def test_train_logs_face_predicted_and_true_visibility_grid(tiny_train_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Three one-step epochs, each validated (steps 1, 2, 3); every second validation is logged: 1 and 3.
    # A plain ModelCheckpoint keeps the weights of every validation, to recompute the predicted overlay.
    cfg = tiny_train_config(
        *CALLBACK,
        "callbacks.visibility_images.every_n_validations=2",
        "trainer.limit_train_batches=1",
        "trainer.max_epochs=3",
        "trainer.max_steps=3",
        "+callbacks.every_validation._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.every_validation.dirpath={tmp_path / 'every_validation'}",
        "+callbacks.every_validation.filename='step{step}'",
        "+callbacks.every_validation.auto_insert_metric_name=false",
        "+callbacks.every_validation.save_top_k=-1",
        "+callbacks.every_validation.mode=max",  # a state key of its own beside last_checkpoint
        run_dir=run_dir,
    )
    train(cfg)

    accumulator = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    tag = "val/synthetic_occluded/visibility"
    assert accumulator.Tags()["images"] == [tag]
    events = accumulator.Images(tag)
    assert [event.step for event in events] == [1, 3]

    grid = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)).convert("RGB"))
    assert grid.shape == (3 * SIZE + 4 * PAD, 4 * SIZE + 5 * PAD, 3)

    # The first four images of the occluded val set, as the loader gives them (pairs in order).
    val_set = instantiate(cfg.val.sets.synthetic_occluded)
    images = torch.stack([val_set[i][0] for i in range(4)])  # uint8 RGB
    target = torch.stack([val_set[i][1] for i in range(4)])  # [4,1,112,112]
    hidden = (target[:, 0] == 0.0).numpy()
    assert hidden.any(axis=(1, 2)).sum() >= 2, "each occluded pair has one occluded image"

    faces01 = images.float() / 255.0
    expected_true = _expected_overlay(faces01, target)
    # What the trained backbone predicts for these faces (the image's own view, as validation scores it).
    checkpoint = load_checkpoint(tmp_path / "every_validation" / "step3.ckpt")
    assert checkpoint["global_step"] == 3
    model = model_from_checkpoint(checkpoint, {}, [])
    model.eval()
    predicted = embed_faces(model.backbone, normalize_faces(images, "rgb")).visibility
    assert predicted.shape[-2:] == (7, 7)
    upsampled = F.interpolate(predicted, size=(SIZE, SIZE))  # nearest: one block per 7x7 cell
    expected_predicted = _expected_overlay(faces01, upsampled)
    predicted_hidden = (upsampled[:, 0] < 0.5).numpy()
    for col in range(4):
        face, pred_row, true_row = (_tile(grid, row, col) for row in range(3))
        assert np.array_equal(face, images[col].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(true_row, expected_true[col], atol=1)
        np.testing.assert_allclose(pred_row, expected_predicted[col], atol=1)
        if hidden[col].any():
            # Where the true visibility is 0, the true overlay is tinted: red up, green and blue down.
            where = hidden[col]
            assert np.abs(true_row[where] - face[where]).mean() > 20
            assert (true_row[where][:, 0] >= face[where][:, 0]).all()
            assert (true_row[where][:, 1:] <= face[where][:, 1:]).all()
        # Where the head predicts "hidden", the predicted row is tinted too.
        if predicted_hidden[col].any():
            where = predicted_hidden[col]
            assert np.abs(pred_row[where] - face[where]).mean() > 10
        visible = ~hidden[col]
        assert np.array_equal(true_row[visible], face[visible])


def test_without_tensorboard_logger_the_callback_does_nothing(tiny_train_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "csv"
    cfg = tiny_train_config(
        *CALLBACK,
        "logger._target_=lightning.pytorch.loggers.CSVLogger",
        "~logger.default_hp_metric",
        "trainer.limit_train_batches=1",
        "trainer.max_steps=1",
        run_dir=run_dir,
    )
    train(cfg)
    assert json.loads((run_dir / "metrics.json").read_text())["val/synthetic_occluded/occ_iou"] >= 0.0
    assert list((run_dir / "tensorboard").glob("metrics.csv"))
    assert not list(run_dir.rglob("events.out.tfevents.*"))
