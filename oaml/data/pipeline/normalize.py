"""The single point where uint8 RGB faces become network input.

Every dataset in OAML decodes to RGB uint8 tensors. AdaFace's released weights were trained on BGR input
(OpenCV decoding) normalised as (x/255 - 0.5) / 0.5; InsightFace's arcface_torch models take RGB with the
same normalisation. Which one a run uses is the config key ``data.channel_order`` (``rgb`` or ``bgr``), read
here and nowhere else, so a model is never fed the wrong order by a silent guess.
"""

from __future__ import annotations

import torch

from oaml.errors import ConfigError

CHANNEL_ORDERS = ("rgb", "bgr")


def check_channel_order(channel_order: str) -> str:
    if channel_order not in CHANNEL_ORDERS:
        raise ConfigError(
            f"data.channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r} "
            "(use bgr for AdaFace checkpoints, rgb for InsightFace ones and for models trained here)"
        )
    return channel_order


def normalize_faces(images: torch.Tensor, channel_order: str = "rgb") -> torch.Tensor:
    """uint8 RGB [B,3,H,W] -> float32 in [-1, 1], channels reordered to ``channel_order``."""
    if images.dtype != torch.uint8:
        raise TypeError(f"faces must arrive as uint8 RGB tensors, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"faces must be [B,3,H,W], got {tuple(images.shape)}")
    if check_channel_order(channel_order) == "bgr":
        images = images.flip(1)
    return images.float().div_(127.5).sub_(1.0)
