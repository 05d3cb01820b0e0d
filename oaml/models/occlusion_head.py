"""Occlusion head: predicts a per-location visibility map from the backbone's feature map.

The map (1 = visible, 0 = occluded) has the feature map's spatial size (7x7 at 112x112 input). It is trained
against downsampled occluder masks and weights QAConv's local correlations, so occluded locations count less
when two faces are matched (the occlusion-aware matching idea of FROM, Qiu et al., TPAMI 2021, applied to
QAConv, Liao & Shao, ECCV 2020).

Kept deliberately small (one 3x3 conv, BN, ReLU, one 1x1 conv): the map is coarse and the head must not add
noticeably to the backbone's cost.

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
from torch import Tensor, nn


class OcclusionHead(nn.Module):
    """conv3x3(C->hidden, no bias) -> BN -> ReLU -> conv1x1(hidden->1, bias) -> sigmoid.

    Input: feature maps [B, C, h, w]. Output: visibility [B, 1, h, w] in [0, 1].
    590,209 parameters at C=512, hidden=128.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 128) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(
                f"OcclusionHead needs in_channels >= 1 and hidden_channels >= 1, "
                f"got in_channels={in_channels}, hidden_channels={hidden_channels}"
            )
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden_channels, 1, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming fan_out conv1, unit BN, Kaiming fan_in conv2 with zero bias (see the module docstring)."""
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn.reset_parameters()
        nn.init.kaiming_normal_(self.conv2.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv2.bias)

    def logits(self, features: Tensor) -> Tensor:
        """Pre-sigmoid visibility [B, 1, h, w] (for a numerically stable BCE loss, should one be wanted)."""
        # (shapes are traced values during ONNX/TorchScript export: check only in eager mode)
        if not torch.jit.is_tracing() and (features.dim() != 4 or features.shape[1] != self.in_channels):
            raise ValueError(
                f"OcclusionHead expects feature maps [B, {self.in_channels}, h, w], got {tuple(features.shape)}"
            )
        return self.conv2(self.relu(self.bn(self.conv1(features))))

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(features))
