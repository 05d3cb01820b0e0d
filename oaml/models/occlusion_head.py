"""Occlusion head: predicts a per-location visibility map from the backbone's feature map.

The map (1 = visible, 0 = occluded) has the feature map's spatial size (7x7 at 112x112 input). It is trained
against downsampled occluder masks and weights QAConv's local correlations, so occluded locations count less
when two faces are matched (the occlusion-aware matching idea of FROM, Qiu et al., TPAMI 2021, applied to
QAConv, Liao & Shao, ECCV 2020).

The spec's head is small (one 3x3 conv, BN, ReLU, one 1x1 conv) on the final map. Options, each measured in
experiments/occlusion_awareness: ``num_layers`` extra conv3x3-BN-ReLU layers; reading a finer map than the
output grid (``output_size``: the head predicts per fine cell and area-averages the probabilities to the output
grid, so each output cell is the predicted visible *fraction* of its area, the quantity its training target
``downsample_visibility`` measures); and a stem of its own (``downsample_steps`` stride-2 blocks), so that it
can read the image itself: a backbone trained for identity learns to ignore occluders, and its features,
final or early, told a head where the occluder is far worse than the pixels did.

Initialisation (:meth:`OcclusionHead.reset_parameters`) is the head's own, not the backbone's. AdaFace's
Kaiming fan_out init would give the final 1x1 conv (fan_out 1) a weight std of about 1.4: initial logits
with a std of 10-20, most sigmoid outputs saturated at 0 or 1, where the MSE has almost no gradient. Kaiming
fan_in (std sqrt(2/hidden)) with a zero bias starts the logits at a std of about 1 (visibility spread around
0.5, none saturated) while keeping the gradient into conv1 large enough to learn fast. Measured on the default
synthetic run after 150 steps (experiments/default_recipe/README.md): fan_in/zero bias reached an occluded-face
MSE of 0.063, the saturating fan_out init 0.071, and a near-zero final weight with bias 2.0 only 0.084.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class OcclusionHead(nn.Module):
    """conv3x3(C->hidden, no bias) -> BN -> ReLU -> [conv3x3(hidden->hidden) -> BN -> ReLU] x num_layers
    -> conv1x1(hidden->1, bias) -> sigmoid -> area average to ``output_size``.

    Input: feature maps (or images) [B, C, H, W]. Output: visibility [B, 1, h, w] in [0, 1], (h, w) =
    ``output_size`` (None: the input's size divided by ``2**downsample_steps``). With the defaults
    (``num_layers=0``, ``downsample_steps=0``, ``output_size=None``) this is the spec's head (590,209 parameters
    at C=512, hidden=128).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 128,
        num_layers: int = 0,
        output_size: tuple[int, int] | None = None,
        downsample_steps: int = 0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1 or num_layers < 0 or downsample_steps < 0:
            raise ValueError(
                f"OcclusionHead needs in_channels >= 1, hidden_channels >= 1, num_layers >= 0 and "
                f"downsample_steps >= 0, got in_channels={in_channels}, hidden_channels={hidden_channels}, "
                f"num_layers={num_layers}, downsample_steps={downsample_steps}"
            )
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.downsample_steps = downsample_steps
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        # A stem of its own (the head reading the image): stride-2 conv3x3-BN-ReLU blocks, widths doubling from
        # 16 up to hidden_channels, each halving the map, e.g. 112 -> 7 in four steps.
        stem: list[nn.Module] = []
        width = in_channels
        for step in range(downsample_steps):
            out = hidden_channels if step == downsample_steps - 1 else min(16 * 2**step, hidden_channels)
            stem.append(_conv_bn_relu(width, out, stride=2))
            width = out
        self.stem = nn.Sequential(*stem)
        self.conv1 = nn.Conv2d(width, hidden_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.relu = nn.ReLU(inplace=True)
        # Named after the spec's layers so that its checkpoints keep their keys (conv1, bn, conv2).
        self.layers = nn.Sequential(
            *(_conv_bn_relu(hidden_channels, hidden_channels) for _ in range(num_layers))
        )
        self.conv2 = nn.Conv2d(hidden_channels, 1, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming fan_out conv1, unit BN, Kaiming fan_in conv2 with zero bias (see the module docstring)."""
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn.reset_parameters()
        for layer in (*self.stem, *self.layers):
            nn.init.kaiming_normal_(layer[0].weight, mode="fan_out", nonlinearity="relu")
            layer[1].reset_parameters()
        nn.init.kaiming_normal_(self.conv2.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv2.bias)

    def logits(self, features: Tensor) -> Tensor:
        """Pre-sigmoid visibility [B, 1, H, W] on the input's own grid (before any area averaging)."""
        # (shapes are traced values during ONNX/TorchScript export: check only in eager mode)
        if not torch.jit.is_tracing():
            if features.dim() != 4 or features.shape[1] != self.in_channels:
                raise ValueError(
                    f"OcclusionHead expects feature maps [B, {self.in_channels}, H, W], got {tuple(features.shape)}"
                )
            factor = 2**self.downsample_steps
            if self.output_size is not None and any(
                size % (out * factor) for size, out in zip(features.shape[-2:], self.output_size)
            ):
                raise ValueError(
                    f"OcclusionHead: input grid {tuple(features.shape[-2:])} is not a multiple of its output "
                    f"grid {self.output_size} times 2^downsample_steps ({factor})"
                )
        return self.conv2(self.layers(self.relu(self.bn(self.conv1(self.stem(features))))))

    def forward(self, features: Tensor) -> Tensor:
        visibility = torch.sigmoid(self.logits(features))
        if self.output_size is None or tuple(visibility.shape[-2:]) == self.output_size:
            return visibility
        # Integer factor (checked above): average pooling is the exact area average of the fine cells.
        factor = (visibility.shape[-2] // self.output_size[0], visibility.shape[-1] // self.output_size[1])
        return F.avg_pool2d(visibility, kernel_size=factor)
