"""Lightning callbacks that show what the numbers hide.

``VisibilityImageLogger`` puts the OcclusionHead's predicted visibility next to the true visibility, as
images in TensorBoard. A visibility IoU (``val/<set>/occ_iou``) says *how much* of the hidden area the head
finds; it does not say *where* it fails: whether it misses scarves but finds sunglasses, paints the whole
lower face as hidden, or marks the background. One small grid per validation answers that at a glance; the
predictions are the ones validation already made (``validation_step`` returns them), so it costs no extra
backbone pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid

from oaml.data.pipeline.normalize import check_channel_order

HIDDEN_COLOR = (1.0, 0.0, 0.0)  # red: the colour hidden regions are tinted with
GRID_PADDING = 2  # pixels between tiles (torchvision's make_grid default)


def denormalize_faces(images: Tensor, channel_order: str = "rgb") -> Tensor:
    """Undo ``oaml.data.pipeline.normalize.normalize_faces``: network input in [-1, 1] -> RGB float in [0, 1].

    ``bgr`` input is flipped back to RGB, so faces always look right whatever the model was fed.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"faces must be [B,3,H,W], got {tuple(images.shape)}")
    if check_channel_order(channel_order) == "bgr":
        images = images.flip(1)
    return (images.float() * 0.5 + 0.5).clamp(0.0, 1.0)


def overlay_visibility(
    faces: Tensor, visibility: Tensor, alpha: float = 0.5, color: Sequence[float] = HIDDEN_COLOR
) -> Tensor:
    """Tint each pixel towards ``color`` by ``alpha * (1 - visibility)``.

    faces: RGB [B,3,H,W] in [0, 1]; visibility: [B,1,H,W] in [0, 1] (1 = visible). Visible pixels come out
    unchanged, fully hidden ones become ``(1 - alpha) * face + alpha * color``.
    """
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [B,3,H,W], got {tuple(faces.shape)}")
    if visibility.ndim != 4 or visibility.shape[1] != 1:
        raise ValueError(f"visibility must be [B,1,H,W], got {tuple(visibility.shape)}")
    if visibility.shape[0] != faces.shape[0] or visibility.shape[-2:] != faces.shape[-2:]:
        raise ValueError(
            f"visibility {tuple(visibility.shape)} does not match faces {tuple(faces.shape)}; "
            "upsample it to the image size first"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tint = torch.as_tensor(color, dtype=faces.dtype, device=faces.device).view(1, 3, 1, 1)
    weight = alpha * (1.0 - visibility.to(faces.dtype).clamp(0.0, 1.0))
    return faces * (1.0 - weight) + tint * weight


def visibility_grid(
    faces: Tensor, predicted: Tensor, target: Tensor, alpha: float = 0.5, padding: int = GRID_PADDING
) -> Tensor:
    """A [3, H', W'] image: one column per face; rows: face, predicted overlay, true overlay.

    ``predicted`` and ``target`` may be at any resolution; they are upsampled to the face size with nearest
    neighbour, so each cell of the head's coarse map (7x7 for a 112x112 face) stays visible as a block.
    """
    size = tuple(faces.shape[-2:])
    predicted = F.interpolate(predicted.float(), size=size, mode="nearest")
    target = F.interpolate(target.float(), size=size, mode="nearest")
    rows = torch.cat(
        [faces, overlay_visibility(faces, predicted, alpha), overlay_visibility(faces, target, alpha)]
    )
    return make_grid(rows, nrow=faces.shape[0], padding=padding)


class VisibilityImageLogger(pl.Callback):
    """Log a face / predicted-visibility / true-visibility grid to TensorBoard at each validation.

    The faces are the first ``num_images`` of the chosen validation set (the same faces every time, so
    successive grids show the head learning), with the visibility validation predicted for them (the
    ``visibility`` that ``validation_step`` returns: the image's own view, as validation scores it). They
    are kept on CPU while validation runs; at its end the grid goes to ``val/<set name>/visibility`` at the
    current global step. Only global rank zero logs; without a TensorBoard logger the callback does nothing.

    Args:
        num_images: faces (grid columns) to show.
        every_n_validations: log at the 1st, (n+1)th, (2n+1)th ... validation (sanity checks not counted).
        dataloader_idx: which validation set; None takes the last one (the occluded set in the defaults,
            the niqab set's held-out faces with masks=niqab: real masks).
        alpha: tint strength of a fully hidden pixel, in [0, 1].
    """

    def __init__(
        self,
        num_images: int = 16,
        every_n_validations: int = 1,
        dataloader_idx: int | None = None,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be at least 1, got {every_n_validations}")
        if dataloader_idx is not None and dataloader_idx < 0:
            raise ValueError(f"dataloader_idx must be >= 0 or None (the last val set), got {dataloader_idx}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.num_images = num_images
        self.every_n_validations = every_n_validations
        self.dataloader_idx = dataloader_idx
        self.alpha = alpha
        self._validations = 0
        self._active = False
        self._loader_idx = 0
        self._channel_order = "rgb"
        self._images: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._predicted: list[Tensor] = []

    # ----------------------------------------------------------------------------------------- hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images, self._targets, self._predicted = [], [], []
        self._active = False
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        if not _tensorboard_loggers(trainer):
            return
        self._loader_idx = self._resolve_loader_idx(trainer)
        self._channel_order = _channel_order(trainer)  # fail at the start of validation, not at its end
        self._active = True

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != self._loader_idx:
            return
        missing = self.num_images - sum(len(images) for images in self._images)
        if missing <= 0:
            return
        if not isinstance(outputs, dict) or "visibility" not in outputs:
            raise TypeError(
                "VisibilityImageLogger needs validation_step to return {'visibility': predicted maps [B,1,h,w]}, "
                f"as oaml.training.module.OAMLModule does; {type(pl_module).__name__} returned {type(outputs).__name__}"
            )
        images, visibility = batch[0], batch[1]
        self._images.append(images[:missing].detach().cpu())
        self._targets.append(visibility[:missing].detach().cpu())
        self._predicted.append(outputs["visibility"][:missing].detach().float().cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active or not self._images:
            return
        images, targets = torch.cat(self._images), torch.cat(self._targets)
        predicted = torch.cat(self._predicted)
        self._images, self._targets, self._predicted = [], [], []
        self._active = False

        if not torch.isfinite(predicted).all():
            rank_zero_warn(
                f"VisibilityImageLogger: the predicted visibility has non-finite values at step "
                f"{trainer.global_step}; no image is logged for this validation"
            )
            return
        faces = denormalize_faces(images, self._channel_order)
        grid = visibility_grid(faces, predicted, targets, self.alpha)
        # Round to uint8 here: TensorBoard truncates floats (x * 255 -> uint8), which shifts pixels by one.
        grid_uint8 = grid.mul(255.0).round_().to(torch.uint8)
        tag = f"val/{self._set_name(pl_module)}/visibility"
        for logger in _tensorboard_loggers(trainer):
            logger.experiment.add_image(tag, grid_uint8, global_step=trainer.global_step)

    # --------------------------------------------------------------------------------------- helpers
    def _resolve_loader_idx(self, trainer: pl.Trainer) -> int:
        count = len(trainer.num_val_batches)
        if self.dataloader_idx is None:
            return count - 1
        if self.dataloader_idx >= count:
            raise ValueError(
                f"VisibilityImageLogger: dataloader_idx={self.dataloader_idx} but there are only {count} "
                f"validation sets; pick one of 0..{count - 1} or null for the last"
            )
        return self.dataloader_idx

    def _set_name(self, pl_module: pl.LightningModule) -> str:
        names = getattr(pl_module, "val_set_names", None) or []
        return names[self._loader_idx] if self._loader_idx < len(names) else f"dataloader_{self._loader_idx}"


def _tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _channel_order(trainer: pl.Trainer) -> str:
    """The datamodule's channel order: the one place that knows how the faces were normalised."""
    order = getattr(trainer.datamodule, "channel_order", None)
    if order is None:
        raise ValueError(
            "VisibilityImageLogger needs the data module's `channel_order` (rgb or bgr) to show faces in "
            "their true colours; train with oaml.data.pipeline.datamodule.OAMLDataModule"
        )
    return order


__all__ = [
    "VisibilityImageLogger",
    "denormalize_faces",
    "overlay_visibility",
    "visibility_grid",
]
