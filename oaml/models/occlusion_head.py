"""Occlusion head: predicts a per-location visibility map from the backbone's feature map.

The map (1 = visible, 0 = occluded) has the feature map's spatial size (7x7 at 112x112 input). It is trained
against downsampled occluder masks and weights QAConv's local correlations, so occluded locations count less
when two faces are matched (the occlusion-aware matching idea of FROM, Qiu et al., TPAMI 2021, applied to
QAConv, Liao & Shao, ECCV 2020).

The spec's head is small (one 3x3 conv, BN, ReLU, one 1x1 conv) on the final map. Two options make it find
the occluder better (measured in experiments/occlusion_awareness): ``num_layers`` extra conv3x3-BN-ReLU layers,
and reading a finer map than the output grid (``output_size``): the head then predicts per fine cell and
area-averages the probabilities to the output grid, so each output cell is the predicted visible *fraction*
of its area, the same quantity its training target (``downsample_visibility``) measures.

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


class OcclusionHead(nn.Module):
    """conv3x3(C->hidden, no bias) -> BN -> ReLU -> [conv3x3(hidden->hidden) -> BN -> ReLU] x num_layers
    -> conv1x1(hidden->1, bias) -> sigmoid -> area average to ``output_size``.

    Input: feature maps [B, C, H, W]. Output: visibility [B, 1, h, w] in [0, 1], (h, w) = ``output_size``
    (None: the input's size). With ``num_layers=0`` and ``output_size=None`` this is the spec's head
    (590,209 parameters at C=512, hidden=128).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 128,
        num_layers: int = 0,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1 or num_layers < 0:
            raise ValueError(
                f"OcclusionHead needs in_channels >= 1, hidden_channels >= 1 and num_layers >= 0, "
                f"got in_channels={in_channels}, hidden_channels={hidden_channels}, num_layers={num_layers}"
            )
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.relu = nn.ReLU(inplace=True)
        # Named after the spec's layers so that its checkpoints keep their keys (conv1, bn, conv2).
        self.layers = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(hidden_channels),
                    nn.ReLU(inplace=True),
                )
                for _ in range(num_layers)
            )
        )
        self.conv2 = nn.Conv2d(hidden_channels, 1, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming fan_out conv1, unit BN, Kaiming fan_in conv2 with zero bias (see the module docstring)."""
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn.reset_parameters()
        for layer in self.layers:
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
            if self.output_size is not None and any(
                size % out for size, out in zip(features.shape[-2:], self.output_size)
            ):
                raise ValueError(
                    f"OcclusionHead: input grid {tuple(features.shape[-2:])} is not a multiple of its output "
                    f"grid {self.output_size}"
                )
        return self.conv2(self.layers(self.relu(self.bn(self.conv1(features)))))

    def forward(self, features: Tensor) -> Tensor:
        visibility = torch.sigmoid(self.logits(features))
        if self.output_size is None or tuple(visibility.shape[-2:]) == self.output_size:
            return visibility
        # Integer factor (checked above): average pooling is the exact area average of the fine cells.
        factor = (visibility.shape[-2] // self.output_size[0], visibility.shape[-1] // self.output_size[1])
        return F.avg_pool2d(visibility, kernel_size=factor)
