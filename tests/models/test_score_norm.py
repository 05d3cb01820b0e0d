"""Impostor score statistics: the running mean/variance they keep and the z-scores they give."""

from __future__ import annotations

import pytest
import torch

from oaml.models.score_norm import ImpostorScoreNorm


def test_first_batch_sets_and_later_batches_blend_impostor_statistics() -> None:
    norm = ImpostorScoreNorm(("adaface", "qaconv"), momentum=0.25)
    assert not norm.ready
    labels = torch.tensor([0, 0, 1, 1])
    impostor = labels[None] != labels[:, None]
    cos = torch.arange(16.0).view(4, 4)
    qa = -2.0 * cos
    norm.update({"adaface": cos, "qaconv": qa}, impostor)
    first = cos[impostor]
    assert norm.ready and int(norm.num_updates) == 1
    assert norm.mean[0].item() == pytest.approx(first.mean().item())
    assert norm.var[0].item() == pytest.approx(first.var(unbiased=False).item())
    assert norm.mean[1].item() == pytest.approx(-2.0 * first.mean().item())
    # genuine pairs (the diagonal blocks) never enter: changing them changes nothing
    changed = cos.clone()
    changed[~impostor] = 1e6
    again = ImpostorScoreNorm(("adaface", "qaconv"), momentum=0.25)
    again.update({"adaface": changed, "qaconv": qa}, impostor)
    torch.testing.assert_close(again.mean, norm.mean)
    second = cos + 10.0
    norm.update({"adaface": second, "qaconv": qa}, impostor)
    assert norm.mean[0].item() == pytest.approx(
        0.75 * first.mean().item() + 0.25 * (first.mean().item() + 10.0)
    )


def test_normalize_gives_impostor_z_scores() -> None:
    torch.manual_seed(0)
    norm = ImpostorScoreNorm(("adaface", "qaconv"), momentum=1.0)
    scores = 3.0 + 0.5 * torch.randn(64, 64)
    impostor = torch.ones(64, 64, dtype=torch.bool)
    norm.update({"adaface": scores, "qaconv": 10 * scores}, impostor)
    z = norm.normalize("adaface", scores[impostor])
    assert abs(z.mean().item()) < 1e-4 and z.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    # the same z for a score and its affinely rescaled twin: both branches end up on one scale
    torch.testing.assert_close(norm.normalize("qaconv", 10 * scores), norm.normalize("adaface", scores))
    with pytest.raises(KeyError, match="fused"):
        norm.normalize("fused", scores)


def test_statistics_are_buffers_that_travel_in_the_state_dict() -> None:
    norm = ImpostorScoreNorm()
    norm.update({"adaface": torch.rand(4, 4), "qaconv": torch.rand(4, 4)}, torch.ones(4, 4, dtype=torch.bool))
    restored = ImpostorScoreNorm()
    restored.load_state_dict(norm.state_dict())
    assert restored.ready
    torch.testing.assert_close(restored.mean, norm.mean)
