"""OcclusionHead: exact layout and size, its own initialisation, output range and shape, input checks."""

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
    with pytest.raises(ValueError, match=r"\[B, 16, H, W\]"):
        OcclusionHead(16)(torch.randn(1, 8, 7, 7))


def test_initialisation_starts_unsaturated() -> None:
    torch.manual_seed(0)
    head = OcclusionHead(512, hidden_channels=128)
    # conv1: Kaiming fan_out (relu), std sqrt(2 / (128 * 3 * 3))
    expected_std = (2.0 / (128 * 9)) ** 0.5
    assert abs(float(head.conv1.weight.detach().std()) - expected_std) / expected_std < 0.02
    # conv2: Kaiming fan_in (relu), std sqrt(2 / 128), zero bias
    assert abs(float(head.conv2.weight.detach().std()) - (2.0 / 128) ** 0.5) < 0.03
    assert torch.all(head.conv2.bias == 0.0)
    assert torch.all(head.bn.weight == 1.0) and torch.all(head.bn.bias == 0.0)
    visibility = head.train()(torch.randn(4, 512, 7, 7))
    # logits of std about 1: spread around 0.5, none saturated
    assert ((visibility > 0.02) & (visibility < 0.98)).all()
    assert 0.3 < float(visibility.mean()) < 0.7 and float(visibility.std()) > 0.1
    with torch.no_grad():
        head.conv2.bias.fill_(-5.0)
        head.conv1.weight.zero_()
    head.reset_parameters()
    assert torch.all(head.conv2.bias == 0.0) and head.conv1.weight.abs().sum() > 0


def test_deeper_head_on_a_finer_map_area_averages_to_the_output_grid() -> None:
    """A 28x28 input with output_size 7x7: each output cell is the mean of the 4x4 fine probabilities it covers
    (the visible fraction of its area), not a subsampled or max-pooled value."""
    torch.manual_seed(0)
    head = OcclusionHead(16, hidden_channels=8, num_layers=2, output_size=(7, 7)).eval()
    assert len(head.layers) == 2 and all(layer[0].kernel_size == (3, 3) for layer in head.layers)
    features = torch.randn(2, 16, 28, 28)
    fine = torch.sigmoid(head.logits(features))
    assert fine.shape == (2, 1, 28, 28)
    expected = fine.reshape(2, 1, 7, 4, 7, 4).mean(dim=(3, 5))
    torch.testing.assert_close(head(features), expected)
    # a map that is not a multiple of the output grid is refused, naming both sizes
    with pytest.raises(ValueError, match=r"\(27, 27\).*\(7, 7\)"):
        head(torch.randn(1, 16, 27, 27))


def test_default_head_keeps_the_spec_layout_and_keys() -> None:
    head = OcclusionHead(32, hidden_channels=8)
    assert len(head.layers) == 0
    assert sorted({key.split(".")[0] for key in head.state_dict()}) == ["bn", "conv1", "conv2"]


def test_own_stem_halves_the_map_per_step() -> None:
    head = OcclusionHead(3, hidden_channels=32, downsample_steps=4, output_size=(7, 7)).eval()
    widths = [block[0].out_channels for block in head.stem]
    assert widths == [16, 32, 32, 32] and all(block[0].stride == (2, 2) for block in head.stem)
    assert head(torch.randn(2, 3, 112, 112)).shape == (2, 1, 7, 7)
    with pytest.raises(ValueError, match="2\\^downsample_steps"):
        head(torch.randn(2, 3, 100, 100))
