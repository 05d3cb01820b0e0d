"""Occlusion-map supervision: MSE between predicted and target visibility, and mask downsampling.

The OcclusionHead predicts a visibility map on the backbone's feature grid (7 x 7 for 112 x 112 faces); the
synthetic occluders give a pixel mask at image resolution. ``downsample_visibility`` turns the pixel mask into
the fraction of each feature cell that is visible, which is the target the MSE compares against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oaml.errors import ConfigError


def _check_visibility_map(x: Tensor, name: str, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{who}: {name} must have shape [B, 1, H, W], got {list(x.shape)}")


def _area_weights(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """``[n_out, n_in]`` matrix: row i holds the fraction of output cell i covered by each input pixel.

    Output cell i spans ``[i * n_in / n_out, (i + 1) * n_in / n_out)`` in pixel units, pixel k spans
    ``[k, k + 1)``; rows sum to 1. Built in float64 so that divisible sizes give exact 1/f weights.
    """
    scale = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64, device=device).unsqueeze(1) * scale
    k = torch.arange(n_in, dtype=torch.float64, device=device).unsqueeze(0)
    overlap = (torch.minimum(lo + scale, k + 1) - torch.maximum(lo, k)).clamp_min(0)
    return overlap / scale


def downsample_visibility(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-average a visibility mask ``[B, 1, H, W]`` to ``[B, 1, h, w]`` (1 = visible).

    Each output cell is the exact mean of the mask over the cell's area, also when H, W are not multiples of
    h, w (pixels on a cell border count with the fraction that lies inside it). For divisible sizes this equals
    ``F.adaptive_avg_pool2d``, which is not used because for other sizes its windows overlap.
    Boolean masks are converted to float; other non-float dtypes are rejected (a uint8 0/255 mask would
    silently give values up to 255).
    """
    _check_visibility_map(mask, "mask", "downsample_visibility")
    if not (
        isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)
    ):
        raise ValueError(f"downsample_visibility: size must be a pair of positive ints (h, w), got {size!r}")
    if mask.dtype == torch.bool:
        mask = mask.float()
    elif not mask.is_floating_point():
        raise TypeError(
            f"downsample_visibility: mask must be bool or float in [0, 1], got {mask.dtype}; convert e.g. a uint8 "
            "0/255 mask with mask.float() / 255"
        )
    out_h, out_w = size
    rows = _area_weights(mask.shape[2], out_h, mask.device).to(mask.dtype)
    cols = _area_weights(mask.shape[3], out_w, mask.device).to(mask.dtype)
    # Targets stay in the mask's own precision also under mixed-precision autocast (which would run the
    # einsum in bf16/fp16 and round the area fractions).
    with torch.autocast(device_type=mask.device.type, enabled=False):
        return torch.einsum("ih,bchw,jw->bcij", rows, mask, cols)


OCCLUSION_LOSS_KINDS = ("mse", "bce")


def _check_target_values(target: Tensor) -> None:
    """No NaN, values in [0, 1]. CPU tensors only: on an accelerator, reading them would stall every training
    step on a host-device synchronisation (a NaN target then shows as a non-finite loss, which the training
    step reports at its next logging step)."""
    if torch.isnan(target).any():
        raise ValueError(
            f"OcclusionLoss: target contains {int(torch.isnan(target).sum())} NaN values; check the "
            "occlusion masks fed to the mask stream"
        )
    if target.numel() and (target.min() < 0 or target.max() > 1):
        raise ValueError(
            f"OcclusionLoss: target must lie in [0, 1] (1 = visible), got range "
            f"[{target.min().item():.4g}, {target.max().item():.4g}]"
        )


class OcclusionLoss(nn.Module):
    """Distance between predicted and target visibility maps, both ``[B, 1, h, w]`` in [0, 1].

    ``kind``: ``mse`` (the spec's) or ``bce``, binary cross-entropy with the soft (area-fraction) target. On a
    sigmoid output MSE's gradient vanishes where the prediction is confidently wrong (a hidden cell called
    visible at 0.95 gets 4% of the push it gets at 0.5); BCE's does not, which is what a head that misses half
    of the hidden region needs (experiments/occlusion_awareness). ``hidden_weight`` > 1 weights hidden cells
    more (a weighted mean over cells). Both run in float32 outside autocast.

    A NaN or out-of-range target is an error (a broken mask must not train the head quietly; checked on CPU
    tensors, see ``_check_target_values``). Downsample
    pixel masks first with ``downsample_visibility(mask, (h, w))``.
    """

    def __init__(self, kind: str = "mse", hidden_weight: float = 1.0) -> None:
        super().__init__()
        if kind not in OCCLUSION_LOSS_KINDS:
            raise ConfigError(
                f"OcclusionLoss kind (loss.occlusion_loss.kind) must be one of {OCCLUSION_LOSS_KINDS}, got {kind!r}"
            )
        if not hidden_weight >= 1.0:
            raise ConfigError(
                f"loss.occlusion_loss.hidden_weight must be >= 1 (1: every cell alike), got {hidden_weight}"
            )
        self.kind = kind
        self.hidden_weight = float(hidden_weight)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_visibility_map(pred, "pred", "OcclusionLoss")
        _check_visibility_map(target, "target", "OcclusionLoss")
        if pred.shape != target.shape:
            raise ValueError(
                f"OcclusionLoss: pred {list(pred.shape)} and target {list(target.shape)} differ; bring the target "
                "to the prediction's grid with oaml.losses.occlusion.downsample_visibility(target, (h, w))"
            )
        if target.device.type == "cpu":
            _check_target_values(target)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            if self.kind == "mse":
                per_cell = F.mse_loss(pred, target, reduction="none")
            else:
                per_cell = F.binary_cross_entropy(pred, target, reduction="none")
            if self.hidden_weight == 1.0:
                return per_cell.mean()
            # Hidden cells are a minority (about one in eight of the synthetic training cells): weight each cell
            # by 1 + (hidden_weight - 1) * hidden fraction, so that missing the occluder costs more.
            weight = 1.0 + (self.hidden_weight - 1.0) * (1.0 - target)
            return (weight * per_cell).sum() / weight.sum()
