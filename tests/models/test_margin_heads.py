"""Margin heads: AdaFace pinned against hand arithmetic, its limits, CosFace/ArcFace formulas, input checks."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from oaml.models import AdaFace, ArcFace, CosFace


def unit_kernel_head(head: torch.nn.Module) -> torch.nn.Module:
    """Class centres along +x, +y, -x (given unnormalised: the head must normalise them)."""
    with torch.no_grad():
        head.kernel.copy_(torch.tensor([[2.0, 0.0, -0.5], [0.0, 3.0, 0.0]]))
    return head


def planar(angles: list[float]) -> torch.Tensor:
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def test_adaface_logits_by_hand() -> None:
    head = unit_kernel_head(
        AdaFace(embedding_size=2, num_classes=3, m=0.4, h=0.333, s=64.0, t_alpha=0.5)
    ).train()
    embeddings = planar([0.3, 1.2])
    norms = torch.tensor([[10.0], [40.0]])
    labels = torch.tensor([0, 1])
    logits = head(embeddings, norms, labels)

    # EMA first (t_alpha 0.5, initial mean 20, std 100): batch mean 25, unbiased std sqrt(12.5^2 * 2 / 1)
    batch_std = math.sqrt((10 - 25) ** 2 + (40 - 25) ** 2)  # 21.2132
    mean = 0.5 * 25 + 0.5 * 20  # 22.5
    std = 0.5 * batch_std + 0.5 * 100  # 60.6066
    assert head.batch_mean.item() == pytest.approx(mean)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)
    z0 = (10 - mean) / (std + 1e-3) * 0.333  # -0.0687
    z1 = (40 - mean) / (std + 1e-3) * 0.333  # +0.0962
    # sample 0, label 0 (+x): theta 0.3, angular margin -m*z0, additive m + m*z0
    theta0 = 0.3
    theta1 = math.pi / 2 - 1.2  # angle between direction 1.2 rad and +y
    expected = torch.tensor(
        [
            [
                64 * (math.cos(theta0 - 0.4 * z0) - (0.4 + 0.4 * z0)),
                64 * math.sin(0.3),
                64 * -math.cos(0.3),
            ],
            [
                64 * math.cos(1.2),
                64 * (math.cos(theta1 - 0.4 * z1) - (0.4 + 0.4 * z1)),
                64 * -math.cos(1.2),
            ],
        ]
    )
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_adaface_h0_equals_cosface() -> None:
    torch.manual_seed(0)
    ada = AdaFace(embedding_size=8, num_classes=5, m=0.4, h=0.0).train()
    cos = CosFace(embedding_size=8, num_classes=5, m=0.4)
    cos.kernel.data.copy_(ada.kernel.data)
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    norms = torch.rand(6, 1) * 50
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(
        ada(embeddings, norms, labels), cos(embeddings, norms, labels), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(
    ("norm", "batch_std", "angular", "additive"),
    [
        (80.0, 10.0, -0.4, 0.8),  # z = (80-20)/10 * 0.333 ~ 2 -> clipped to 1: angular -m, additive 2m
        (0.001, 5.0, 0.4, 0.0),  # z = (0.001-20)/5 * 0.333 ~ -1.33 -> -1: angular +m, additive 0
    ],
)
def test_adaface_margin_saturates_for_extreme_norms(
    norm: float, batch_std: float, angular: float, additive: float
) -> None:
    head = unit_kernel_head(AdaFace(embedding_size=2, num_classes=3, m=0.4, h=0.333)).eval()
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(batch_std)
    logits = head(planar([0.5]), torch.tensor([[norm]]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64 * (math.cos(0.5 + angular) - additive), abs=1e-4)
    # eval mode leaves the statistics alone
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == batch_std


def test_adaface_detaches_and_clips_norms_and_names_its_state() -> None:
    head = AdaFace(embedding_size=4, num_classes=3).train()
    assert set(head.state_dict()) == {"kernel", "t", "batch_mean", "batch_std"}
    assert head.kernel.shape == (4, 3)
    embeddings = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    norms = torch.tensor([[500.0], [1.0], [2.0]], requires_grad=True)
    head(embeddings, norms, torch.tensor([0, 1, 2])).sum().backward()
    assert norms.grad is None and embeddings.grad is not None
    # the 500 was clipped to 100 before entering the EMA: mean of (100, 1, 2) is 34.333
    assert head.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * (103 / 3))


def test_arcface_and_cosface_formulas() -> None:
    arc = unit_kernel_head(ArcFace(embedding_size=2, num_classes=3, m=0.5, s=30.0))
    cos = unit_kernel_head(CosFace(embedding_size=2, num_classes=3, m=0.35, s=30.0))
    emb = planar([0.3])
    label = torch.tensor([0])
    torch.testing.assert_close(
        arc(emb, None, label), torch.tensor([[30 * math.cos(0.8), 30 * math.sin(0.3), -30 * math.cos(0.3)]])
    )
    torch.testing.assert_close(
        cos(emb, None, label),
        torch.tensor([[30 * (math.cos(0.3) - 0.35), 30 * math.sin(0.3), -30 * math.cos(0.3)]]),
    )


def test_bad_inputs_are_rejected() -> None:
    head = AdaFace(embedding_size=4, num_classes=3).train()
    emb = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    with pytest.raises(ValueError, match="num_classes"):
        head(emb, torch.ones(2, 1), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"norms \[B, 1\]"):
        head(emb, torch.ones(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"embeddings \[B, 4\]"):
        head(torch.randn(2, 5), torch.ones(2, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=">= 2 samples"):
        head(emb[:1], torch.ones(1, 1), torch.tensor([0]))


@pytest.mark.parametrize("head_class", [AdaFace, ArcFace, CosFace])
def test_num_classes_is_required_by_every_head(head_class: type) -> None:
    """No head guesses the class count (AdaFace once defaulted to MS1MV2's 70722): it comes from the data."""
    with pytest.raises(TypeError, match="num_classes"):
        head_class(embedding_size=8)
    assert list(inspect.signature(head_class).parameters)[:3] == ["embedding_size", "num_classes", "m"]
