"""Occlusion-map MSE and exact area downsampling of visibility masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oaml.losses import OcclusionLoss
from oaml.losses.occlusion import downsample_visibility


def test_loss_is_mean_squared_error() -> None:
    pred = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.25]]]])
    assert OcclusionLoss()(pred, target).item() == pytest.approx((1.0 + 0.0 + 0.25 + 0.0) / 4)


def test_loss_gradient_reaches_prediction() -> None:
    pred = torch.full((2, 1, 3, 3), 0.5, requires_grad=True)
    target = torch.zeros(2, 1, 3, 3)
    OcclusionLoss()(pred, target).backward()
    torch.testing.assert_close(pred.grad, torch.full((2, 1, 3, 3), 2 * 0.5 / 18))


def test_loss_rejects_nan_range_and_shape() -> None:
    pred = torch.rand(2, 1, 3, 3)
    target = torch.rand(2, 1, 3, 3)
    target[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        OcclusionLoss()(pred, target)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        OcclusionLoss()(pred, torch.full((2, 1, 3, 3), 2.0))
    with pytest.raises(ValueError, match="downsample_visibility"):
        OcclusionLoss()(pred, torch.rand(2, 1, 6, 6))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        OcclusionLoss()(torch.rand(2, 3, 3), torch.rand(2, 3, 3))


def test_downsample_divisible_equals_area_pooling() -> None:
    mask = (torch.rand(2, 1, 112, 112) > 0.5).float()
    out = downsample_visibility(mask, (7, 7))
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(mask, 7))
    torch.testing.assert_close(out[0, 0, 0, 0], mask[0, 0, :16, :16].mean())


def test_downsample_non_divisible_is_exact_area_average() -> None:
    mask = torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]])  # H=2, W=3 -> (1, 2)
    out = downsample_visibility(mask, (1, 2))
    # Cell 0 covers columns [0, 1.5): column 0 fully, column 1 half -> (1 + 0 + 0.5 * (0 + 0)) / (2 * 1.5).
    torch.testing.assert_close(out, torch.tensor([[[[1.0 / 3.0, 1.0 / 3.0]]]]))
    big = torch.rand(3, 1, 50, 45)
    small = downsample_visibility(big, (7, 7))
    assert small.shape == (3, 1, 7, 7)
    torch.testing.assert_close(small.mean(dim=(2, 3)), big.mean(dim=(2, 3)))  # equal-area cells keep the mean
    assert small.min() >= 0.0 and small.max() <= 1.0


def test_downsample_accepts_bool_and_rejects_bad_input() -> None:
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    torch.testing.assert_close(
        downsample_visibility(mask, (2, 2)), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    )
    with pytest.raises(TypeError, match="uint8"):
        downsample_visibility(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), (2, 2))
    with pytest.raises(ValueError, match="size"):
        downsample_visibility(torch.zeros(1, 1, 4, 4), (2, 0))
    with pytest.raises(ValueError, match="mask"):
        downsample_visibility(torch.zeros(1, 2, 4, 4), (2, 2))


def test_bce_with_soft_targets_and_its_gradient_where_mse_vanishes() -> None:
    pred = torch.tensor([[[[0.9, 0.2], [0.5, 0.99]]]])
    target = torch.tensor([[[[0.25, 0.0], [1.0, 1.0]]]])
    expected = -(target * pred.log() + (1 - target) * (1 - pred).log()).mean()
    assert OcclusionLoss("bce")(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # a hidden cell called visible at 0.99: BCE still pushes hard (gradient wrt the logit 0.99 / n); MSE barely
    logit = torch.tensor([[[[4.6]]]], requires_grad=True)
    zero = torch.zeros(1, 1, 1, 1)
    OcclusionLoss("bce")(torch.sigmoid(logit), zero).backward()
    bce_grad = logit.grad.item()
    logit.grad = None
    OcclusionLoss("mse")(torch.sigmoid(logit), zero).backward()
    assert bce_grad > 0.98 and logit.grad.item() < 0.02


def test_unknown_loss_kind_names_the_key() -> None:
    with pytest.raises(ValueError, match="loss.occlusion_loss.kind"):
        OcclusionLoss("dice")


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_hidden_weight_is_a_weighted_mean_over_cells(kind: str) -> None:
    pred = torch.tensor([[[[0.9, 0.2], [0.6, 0.7]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.5, 1.0]]]])
    plain = OcclusionLoss(kind)
    per_cell = (
        (pred - target) ** 2 if kind == "mse" else -(target * pred.log() + (1 - target) * (1 - pred).log())
    )
    weight = 1 + 3 * (1 - target)  # hidden_weight 4: a fully hidden cell counts 4x, a half-hidden one 2.5x
    expected = (weight * per_cell).sum() / weight.sum()
    assert OcclusionLoss(kind, hidden_weight=4.0)(pred, target).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    assert plain(pred, target).item() == pytest.approx(per_cell.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="hidden_weight"):
        OcclusionLoss(kind, hidden_weight=0.5)
