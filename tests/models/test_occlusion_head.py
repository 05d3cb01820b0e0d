"""OcclusionHead: exact layout and size, output range and shape, input checks."""

from __future__ import annotations

import pytest
import torch

from oaml.models import OcclusionHead


def test_parameter_count_and_layers() -> None:
    head = OcclusionHead(512, hidden_channels=128)
    # 3x3 conv without bias + BN(128) affine + 1x1 conv with bias
    assert sum(p.numel() for p in head.parameters()) == 512 * 128 * 9 + 2 * 128 + 128 + 1 == 590_209
    assert head.conv1.kernel_size == (3, 3) and head.conv1.padding == (1, 1) and head.conv1.bias is None
    assert head.conv2.kernel_size == (1, 1) and head.conv2.bias is not None


def test_output_is_a_visibility_map_in_unit_range() -> None:
    torch.manual_seed(0)
    head = OcclusionHead(32, hidden_channels=8)
    # large inputs push the logits far out; the sigmoid must still bound them
    features = 50 * torch.randn(3, 32, 7, 7)
    out = head(features)
    assert out.shape == (3, 1, 7, 7)
    assert ((out >= 0) & (out <= 1)).all()
    torch.testing.assert_close(out, torch.sigmoid(head.logits(features)))


def test_spatial_size_follows_the_input() -> None:
    head = OcclusionHead(16, hidden_channels=4).eval()
    assert head(torch.randn(1, 16, 14, 14)).shape == (1, 1, 14, 14)


def test_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[B, 16, h, w\]"):
        OcclusionHead(16)(torch.randn(1, 8, 7, 7))
