"""Pairwise matching and batch-hard triplet losses on QAConv self-match logits."""

from __future__ import annotations

import math

import pytest
import torch

from oaml.losses import PairwiseMatchingLoss, TripletLoss
from oaml.models.iresnet import build_backbone
from oaml.models.qaconv import QAConv

# Identities [0, 0, 1, 1]; rows are probes.
LABELS = torch.tensor([0, 0, 1, 1])
SCORES = torch.tensor(
    [
        [9.0, 2.0, -1.0, 1.0],  # min other positive 2 > max negative 1: correct
        [3.0, 5.0, 4.0, 0.0],  # 3 < 4: wrong
        [-2.0, 0.5, 7.0, -3.0],  # self 7 ignored; min other positive -3 < 0.5: wrong
        [1.0, -1.0, 6.0, 8.0],  # 6 > 1: correct
    ]
)


def _bce(x: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))


def test_pairwise_loss_value_and_accuracy() -> None:
    loss, acc = PairwiseMatchingLoss()(SCORES, LABELS)
    same = LABELS[:, None] == LABELS[None]
    expected = (
        sum(
            _bce(SCORES[i, j].item(), float(same[i, j]))
            for i in range(4)
            for j in range(4)  # self-pairs included
        )
        / 4
    )  # summed over the gallery, averaged over probes
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)
    assert not acc.requires_grad


def test_pairwise_loss_gradient_is_sigmoid_minus_target() -> None:
    scores = SCORES.clone().requires_grad_()
    PairwiseMatchingLoss()(scores, LABELS)[0].backward()
    same = (LABELS[:, None] == LABELS[None]).float()
    torch.testing.assert_close(scores.grad, (torch.sigmoid(SCORES) - same) / 4)


def test_triplet_loss_value_and_hardest_pairs_only() -> None:
    scores = SCORES.clone().requires_grad_()
    loss, acc = TripletLoss(margin=16.0)(scores, LABELS)
    # hinge(max_neg - min_pos + 16) per probe: (1 - 2 + 16), (4 - 3 + 16), (0.5 + 3 + 16), (1 - 6 + 16)
    assert loss.item() == pytest.approx((15 + 17 + 19.5 + 11) / 4)
    assert acc.item() == pytest.approx(0.5)
    loss.backward()
    expected = torch.zeros(4, 4)
    for row, (pos, neg) in enumerate([(1, 3), (0, 2), (3, 1), (2, 0)]):
        expected[row, pos] = -0.25
        expected[row, neg] = 0.25
    torch.testing.assert_close(scores.grad, expected)


def test_triplet_margin_satisfied_gives_zero_loss() -> None:
    scores = torch.tensor([[0.0, 20.0, -1.0], [20.0, 0.0, -2.0], [-1.0, -2.0, 0.0]])
    loss, acc = TripletLoss(margin=16.0)(scores, torch.tensor([5, 5, 7]))
    assert loss.item() == 0.0  # probe 2 has no other positive and is left out
    assert acc.item() == 1.0


def test_accuracy_excludes_probes_without_positive_or_negative() -> None:
    scores = torch.tensor([[0.0, 1.0, 5.0], [1.0, 0.0, -5.0], [5.0, -5.0, 0.0]])
    _, acc = PairwiseMatchingLoss()(scores, torch.tensor([1, 1, 2]))
    assert acc.item() == 0.5  # probe 0 wrong (5 > 1), probe 1 right, probe 2 (alone) not counted
    _, acc = PairwiseMatchingLoss()(scores, torch.tensor([1, 2, 3]))
    assert math.isnan(acc.item())


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="square"):
        PairwiseMatchingLoss()(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        TripletLoss()(torch.zeros(3, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="no probe"):
        TripletLoss()(torch.zeros(3, 3), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-1.0)


@pytest.mark.parametrize("loss_fn", [PairwiseMatchingLoss(), TripletLoss(margin=16.0)])
def test_qaconv_loss_alone_trains_the_backbone(loss_fn: torch.nn.Module) -> None:
    """The matching loss must reach the backbone's weights (the predecessor's never did)."""
    torch.manual_seed(0)
    backbone = build_backbone("ir_nano").train()
    images = torch.randn(6, 3, 112, 112)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    feature_maps = backbone.forward_features(images)
    qaconv = QAConv(
        feature_maps.shape[1], feature_maps.shape[2], feature_maps.shape[3], weighting="mask"
    ).train()
    loss, _ = loss_fn(qaconv(feature_maps), labels)
    loss.backward()
    stem = backbone.input_layer[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    body_grads = [p.grad for name, p in backbone.named_parameters() if name.startswith("body.")]
    assert body_grads and all(g is not None for g in body_grads)
    assert sum(g.abs().sum() for g in body_grads) > 0
