"""QAConv: the 2.1 formula, the five weighting modes, index discipline, chunked/pairwise scoring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oaml.models.qaconv import WEIGHTINGS, QAConv

C, H, W = 8, 3, 4  # H != W so that a height/width mix-up breaks shapes or numbers
HW = H * W
WEIGHTED = ("product", "mask", "pooled", "covisible")


def make_qaconv(weighting: str, seed: int = 0) -> QAConv:
    """A QAConv in eval mode with non-trivial BatchNorm statistics and fc weights."""
    torch.manual_seed(seed)
    qa = QAConv(C, H, W, weighting=weighting)
    with torch.no_grad():
        for bn in (qa.bn, qa.logit_bn):
            bn.weight.fill_(1.7)
            bn.bias.fill_(-0.3)
            bn.running_mean.fill_(0.2)
            bn.running_var.fill_(0.05)
        qa.fc.weight.copy_(torch.rand(1, HW) / HW)
        qa.fc.bias.fill_(0.1)
    return qa.eval()


def maps(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, C, H, W, generator=torch.Generator().manual_seed(seed))


def visibility(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, H, W, generator=torch.Generator().manual_seed(seed))


def _bn_eval(x: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def reference_scores(
    qa: QAConv,
    prob: torch.Tensor,
    gal: torch.Tensor,
    prob_occ: torch.Tensor | None,
    gal_occ: torch.Tensor | None,
    swap_axes: bool = False,
) -> torch.Tensor:
    """The spec written out literally, with a materialised [P, G, r, s] weight tensor (eval-mode BN).

    ``swap_axes`` reproduces the predecessor's bug: probe visibility applied to gallery locations r and
    gallery visibility to probe locations s.
    """
    p = F.normalize(prob, dim=1).flatten(2)
    g = F.normalize(gal, dim=1).flatten(2)
    score = torch.einsum("pcs,gcr->pgrs", p, g)
    mode = qa.weighting
    if mode != "none":
        vp, vg = prob_occ.flatten(1), gal_occ.flatten(1)
        if swap_axes:
            weight = vp[:, None, :, None] * vg[None, :, None, :]
        else:
            weight = vg[None, :, :, None] * vp[:, None, None, :]
        if mode == "covisible":  # hard: hidden (< 0.5) locations excluded, visible correlations untouched
            hard_p, hard_g = (vp >= 0.5).float(), (vg >= 0.5).float()
            weight = hard_g[None, :, :, None] * hard_p[:, None, None, :]
            if swap_axes:
                weight = hard_p[:, None, :, None] * hard_g[None, :, None, :]
        score = weight * score if mode == "product" else weight * score + (1 - weight) * -1.0
    per_probe_loc = _bn_eval(score.max(dim=2).values, qa.bn)  # [p, g, s]
    per_gallery_loc = _bn_eval(score.max(dim=3).values, qa.bn)  # [p, g, r]
    if mode == "pooled":
        wp = vp * HW / vp.sum(dim=1, keepdim=True)
        wg = vg * HW / vg.sum(dim=1, keepdim=True)
        if swap_axes:
            per_probe_loc, per_gallery_loc = per_probe_loc * wg[None], per_gallery_loc * wp[:, None]
        else:
            per_probe_loc, per_gallery_loc = per_probe_loc * wp[:, None], per_gallery_loc * wg[None]
    if mode == "covisible":
        covisible = (vp[:, None, :] >= 0.5).float() * (
            vg[None, :, :] >= 0.5
        ).float()  # [p, g, l]: both show l
        weight = covisible * HW / covisible.sum(dim=-1, keepdim=True) if qa.covisible_average else covisible
        per_probe_loc, per_gallery_loc = per_probe_loc * weight, per_gallery_loc * weight
    fc_w, fc_b = qa.fc.weight[0], qa.fc.bias[0]
    logit = per_probe_loc @ fc_w + fc_b + per_gallery_loc @ fc_w + fc_b
    return _bn_eval(logit, qa.logit_bn)


def asymmetric_visibility(n: int, hide: str) -> torch.Tensor:
    """Maps hiding the top rows (``hide="rows"``) or the left columns, with soft values elsewhere."""
    vis = 0.5 + 0.5 * visibility(n, seed=7)
    if hide == "rows":
        vis[:, :, :1, :] = 0.0
    else:
        vis[:, :, :, :2] = 0.0
    return vis


# ------------------------------------------------------------------------------------------- the formula


def test_none_matches_reference_formula_in_train_mode() -> None:
    """Train-mode BN over all pooled values of both directions, shared fc, both directions summed."""
    qa = QAConv(C, H, W).train()
    prob, gal = maps(5, 1), maps(4, 2)
    p = F.normalize(prob, dim=1).flatten(2)
    g = F.normalize(gal, dim=1).flatten(2)
    score = torch.einsum("pcs,gcr->pgrs", p, g)
    pooled = torch.cat((score.max(dim=2).values, score.max(dim=3).values), dim=-1)  # [p, g, 2hw]
    normed = (pooled - pooled.mean()) / torch.sqrt(pooled.var(unbiased=False) + 1e-5)
    logit = normed[..., :HW].mean(-1) + normed[..., HW:].mean(-1) + 2 * qa.fc.bias[0]
    expected = (logit - logit.mean()) / torch.sqrt(logit.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(qa(prob, gal), expected, atol=1e-5, rtol=1e-5)


def test_fc_initialised_to_mean() -> None:
    qa = QAConv(C, H, W)
    torch.testing.assert_close(qa.fc.weight, torch.full((1, HW), 1.0 / HW))


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_every_mode_matches_materialised_reference(weighting: str) -> None:
    qa = make_qaconv(weighting)
    prob, gal = maps(5, 1), maps(4, 2)
    vp, vg = asymmetric_visibility(5, "rows"), asymmetric_visibility(4, "cols")
    expected = reference_scores(qa, prob, gal, vp, vg)
    torch.testing.assert_close(qa(prob, gal, vp, vg), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighting", WEIGHTED)
def test_swapped_axes_give_different_scores(weighting: str) -> None:
    """The predecessor's bug (probe visibility on gallery locations) must not pass for the correct form."""
    qa = make_qaconv(weighting)
    prob, gal = maps(5, 1), maps(4, 2)
    vp, vg = asymmetric_visibility(5, "rows"), asymmetric_visibility(4, "cols")
    scores = qa(prob, gal, vp, vg)
    swapped = reference_scores(qa, prob, gal, vp, vg, swap_axes=True)
    assert (scores - swapped).abs().max() > 1e-2


def test_mask_hidden_correlation_cannot_beat_visible_one() -> None:
    """product lets a hidden (zeroed) correlation win the max against negative cosines; mask does not."""
    prob = torch.zeros(1, C, H, W)
    prob[:, 0] = 1.0  # every probe location points along channel 0
    gal = torch.zeros(1, C, H, W)
    gal[:, 0] = -1.0  # every gallery location is anti-aligned (cosine -1) ...
    gal[:, 0, 0, 0] = 0.2
    gal[:, 1, 0, 0] = 1.0  # ... except the first one, cosine ~0.196
    vp = torch.ones(1, 1, H, W)
    vg = torch.ones(1, 1, H, W)
    vg[:, :, 0, 0] = 0.0  # hide the only well-matching gallery location
    per_loc = {}
    for mode in ("product", "mask"):
        qa = QAConv(C, H, W, weighting=mode).eval()
        per_loc[mode] = reference_scores(qa, prob, gal, vp, vg)
        torch.testing.assert_close(qa(prob, gal, vp, vg), per_loc[mode], atol=1e-5, rtol=1e-5)
    # product: every probe location's max is the hidden 0; mask: -1 (hidden pushed to -1, visible ones are -1).
    assert per_loc["product"].item() > per_loc["mask"].item() + 0.5


# ---------------------------------------------------------------------------------------- index discipline


@pytest.mark.parametrize("weighting", WEIGHTED)
def test_hidden_probe_location_ignores_its_features(weighting: str) -> None:
    qa = make_qaconv(weighting)
    prob, gal = maps(3, 1), maps(4, 2)
    vp, vg = visibility(3, 3), visibility(4, 4)
    s = 5  # (row 1, col 1)
    vp[0, 0, s // W, s % W] = 0.0
    changed = prob.clone()
    changed[0, :, s // W, s % W] = 100.0 * torch.randn(C)
    torch.testing.assert_close(qa(changed, gal, vp, vg), qa(prob, gal, vp, vg), atol=1e-6, rtol=1e-6)
    # The same replacement while visible does change the probe's scores: the invariance is not vacuous.
    vp[0, 0, s // W, s % W] = 1.0
    assert (qa(changed, gal, vp, vg)[0] - qa(prob, gal, vp, vg)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("weighting", WEIGHTED)
def test_hidden_gallery_location_ignores_its_features(weighting: str) -> None:
    qa = make_qaconv(weighting)
    prob, gal = maps(3, 1), maps(4, 2)
    vp, vg = visibility(3, 3), visibility(4, 4)
    r = 7  # (row 1, col 3)
    vg[2, 0, r // W, r % W] = 0.0
    changed = gal.clone()
    changed[2, :, r // W, r % W] = 100.0 * torch.randn(C)
    torch.testing.assert_close(qa(prob, changed, vp, vg), qa(prob, gal, vp, vg), atol=1e-6, rtol=1e-6)
    vg[2, 0, r // W, r % W] = 1.0
    assert (qa(prob, changed, vp, vg)[:, 2] - qa(prob, gal, vp, vg)[:, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("weighting", WEIGHTED)
def test_hidden_location_in_self_matching(weighting: str) -> None:
    qa = make_qaconv(weighting)
    x, v = maps(4, 1), visibility(4, 3)
    v[1, 0, 2, 0] = 0.0
    changed = x.clone()
    changed[1, :, 2, 0] = -50.0 * torch.randn(C)
    torch.testing.assert_close(qa(changed, None, v), qa(x, None, v), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_all_ones_visibility_equals_none(weighting: str) -> None:
    qa = make_qaconv(weighting)
    reference = make_qaconv("none")
    prob, gal = maps(5, 1), maps(4, 2)
    ones_p, ones_g = torch.ones(5, 1, H, W), torch.ones(4, 1, H, W)
    torch.testing.assert_close(qa(prob, gal, ones_p, ones_g), reference(prob, gal), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qa(prob, gal), reference(prob, gal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighting", WEIGHTED)
def test_hiding_a_location_changes_scores(weighting: str) -> None:
    qa = make_qaconv(weighting)
    prob, gal = maps(3, 1), maps(4, 2)
    vp, vg = torch.ones(3, 1, H, W), torch.ones(4, 1, H, W)
    before = qa(prob, gal, vp, vg)
    vp[1, 0, 0, 2] = 0.0
    after = qa(prob, gal, vp, vg)
    assert (after[1] - before[1]).abs().max() > 1e-3
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])  # other probes untouched


def test_none_ignores_visibility() -> None:
    qa = make_qaconv("none")
    prob, gal = maps(3, 1), maps(4, 2)
    torch.testing.assert_close(qa(prob, gal, visibility(3, 3), visibility(4, 4)), qa(prob, gal))


def test_pooled_does_not_penalise_hidden_half_for_itself() -> None:
    """A gallery face identical to the probe on its visible half scores like the full match in ``pooled``."""
    qa = QAConv(C, H, W, weighting="pooled").eval()
    x = maps(1, 1)
    half = torch.ones(1, 1, H, W)
    half[:, :, :, : W // 2] = 0.0
    full = qa(x, x, torch.ones(1, 1, H, W), torch.ones(1, 1, H, W))
    # Both sides hide the same half: each visible location still finds itself (cosine 1), and the terms are
    # renormalised over the visible half, so the score equals the fully visible self-match.
    gallery_half = qa(x, x, half, half)
    torch.testing.assert_close(gallery_half, full, atol=1e-5, rtol=1e-5)
    mask = QAConv(C, H, W, weighting="mask").eval()
    assert mask(x, x, half, half).item() < mask(x, x).item() - 0.1


def test_covisible_average_scores_a_half_hidden_face_like_the_full_match() -> None:
    """Only one side hides half the face: ``covisible_average`` averages over the co-visible half, where every
    location still finds itself, so the score equals the full self-match; ``pooled`` (probe terms over all probe
    locations) and ``mask`` score it lower."""
    x = maps(1, 1)
    half = torch.ones(1, 1, H, W)
    half[:, :, :, : W // 2] = 0.0
    ones = torch.ones(1, 1, H, W)
    qa = QAConv(C, H, W, weighting="covisible", covisible_average=True).eval()
    full = qa(x, x, ones, ones)
    torch.testing.assert_close(qa(x, x, ones, half), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qa(x, x, half, ones), full, atol=1e-5, rtol=1e-5)
    for mode in ("pooled", "mask"):
        other = QAConv(C, H, W, weighting=mode).eval()
        assert other(x, x, ones, half).item() < other(x, x, ones, ones).item() - 0.05, mode


@pytest.mark.parametrize("average", [False, True])
def test_covisible_reference_with_and_without_average(average: bool) -> None:
    qa = make_qaconv("covisible")
    qa.covisible_average = average
    prob, gal = maps(5, 1), maps(4, 2)
    vp, vg = visibility(5, 3), visibility(4, 4)
    torch.testing.assert_close(
        qa(prob, gal, vp, vg), reference_scores(qa, prob, gal, vp, vg), atol=1e-5, rtol=1e-5
    )


def test_covisible_weights_each_location_by_both_faces() -> None:
    """A location hidden in the gallery drops out of the probe-location terms too (and vice versa): the terms
    of location l are weighted by v_p[l] * v_g[l], not by one side alone."""
    qa = make_qaconv("covisible")
    prob, gal = maps(1, 1), maps(1, 2)
    ones = torch.ones(1, 1, H, W)
    hidden = ones.clone()
    hidden[0, 0, 1, 2] = 0.0
    loc = 1 * W + 2
    p = F.normalize(prob, dim=1).flatten(2)[0]  # [C, hw]
    g = F.normalize(gal, dim=1).flatten(2)[0]
    corr = g.t() @ p  # [r, s]
    corr_masked = corr.clone()
    corr_masked[loc, :] = -1.0  # the hidden gallery location cannot win a max
    keep = torch.arange(HW) != loc
    per_probe = _bn_eval(corr_masked.max(dim=0).values, qa.bn)[keep]
    per_gallery = _bn_eval(corr_masked.max(dim=1).values, qa.bn)[keep]
    fc_w = qa.fc.weight[0][keep]  # the hidden location's terms are dropped (0), the others summed as in none
    logit = per_probe @ fc_w + per_gallery @ fc_w + 2 * qa.fc.bias[0]
    expected = _bn_eval(logit, qa.logit_bn)[0]
    torch.testing.assert_close(qa(prob, gal, ones, hidden)[0, 0], expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_gradients_reach_features_and_visibility(weighting: str) -> None:
    qa = QAConv(C, H, W, weighting=weighting).train()
    x = maps(6, 1).requires_grad_()
    v = visibility(6, 2).requires_grad_()
    qa(x, None, v).logsumexp(dim=1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    if weighting == "none":
        assert v.grad is None
    elif weighting == "covisible":
        # hard 0/1 thresholds: the visibility decides, it is not trained by matching
        assert v.grad is None or v.grad.abs().sum() == 0
    else:
        assert v.grad is not None and v.grad.abs().sum() > 0
    for name, param in qa.named_parameters():
        assert param.grad is not None, name


def test_detached_visibility_gets_no_gradient() -> None:
    qa = QAConv(C, H, W, weighting="mask").train()
    x = maps(4, 1).requires_grad_()
    v = visibility(4, 2).requires_grad_()
    qa(x, None, v.detach()).sum().backward()
    assert v.grad is None and x.grad is not None


# --------------------------------------------------------------------- match, pair_scores, normalisation


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_chunked_match_equals_forward(weighting: str) -> None:
    qa = make_qaconv(weighting)
    prob, gal = maps(7, 1), maps(5, 2)
    vp, vg = visibility(7, 3), visibility(5, 4)
    full = qa(prob, gal, vp, vg)
    torch.testing.assert_close(qa.match(prob, gal, vp, vg, probe_chunk=3, gallery_chunk=2), full)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_pair_scores_equal_match_diagonal(weighting: str) -> None:
    qa = make_qaconv(weighting)
    a, b = maps(6, 1), maps(6, 2)
    va, vb = asymmetric_visibility(6, "rows"), asymmetric_visibility(6, "cols")
    diag = qa.match(a, b, va, vb).diagonal()
    torch.testing.assert_close(qa.pair_scores(a, b, va, vb), diag, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_match_symmetric_without_visibility(weighting: str) -> None:
    qa = make_qaconv(weighting)
    x, y = maps(5, 1), maps(3, 2)
    torch.testing.assert_close(qa.match(x, y), qa.match(y, x).T, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_match_symmetric_with_visibility(weighting: str) -> None:
    """Swapping probe and gallery, each with its own visibility, transposes the scores in every mode."""
    qa = make_qaconv(weighting)
    x, y = maps(5, 1), maps(3, 2)
    vx, vy = asymmetric_visibility(5, "rows"), asymmetric_visibility(3, "cols")
    forward = qa.match(x, y, vx, vy)
    torch.testing.assert_close(forward, qa.match(y, x, vy, vx).T, atol=1e-6, rtol=1e-6)
    if weighting != "none":  # the visibility is not ignored, so the symmetry is not the trivial one
        assert (forward - qa.match(x, y)).abs().max() > 1e-3


def test_normalisation_inside_is_idempotent_and_scale_free() -> None:
    qa = make_qaconv("mask")
    x, v = maps(4, 1), visibility(4, 2)
    base = qa(x, None, v)
    torch.testing.assert_close(qa(F.normalize(x, dim=1), None, v), base)
    torch.testing.assert_close(qa(3.5 * x, None, v), base)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="weighting"):
        QAConv(C, H, W, weighting="soft")
    with pytest.raises(ValueError, match="height"):
        QAConv(C, 0, W)
    qa = make_qaconv("product")
    with pytest.raises(ValueError, match="prob_fea"):
        qa(torch.randn(2, C, W, H))
    with pytest.raises(ValueError, match="prob_occ"):
        qa(maps(2, 1), None, torch.ones(2, 1, W, H))
    with pytest.raises(ValueError, match="gal_occ"):
        qa(maps(2, 1), None, None, torch.ones(2, 1, H, W))
    with pytest.raises(ValueError, match="probe_occ"):
        qa.match(maps(2, 1), maps(2, 2), torch.full((2, 1, H, W), 1.5), None)
    with pytest.raises(ValueError, match="a_occ"):
        qa.pair_scores(maps(2, 1), maps(2, 2), torch.full((2, 1, H, W), float("nan")))
    with pytest.raises(ValueError, match="probe_chunk"):
        qa.match(maps(2, 1), maps(2, 2), probe_chunk=0)
    with pytest.raises(ValueError, match="same number"):
        qa.pair_scores(maps(2, 1), maps(3, 2))
    qa.train()
    with pytest.raises(RuntimeError, match="eval"):
        qa.match(maps(2, 1), maps(2, 2))
    with pytest.raises(RuntimeError, match="eval"):
        qa.pair_scores(maps(2, 1), maps(2, 2))


def test_covisible_leaves_confidently_visible_faces_at_none_scores() -> None:
    """Soft visibility of a clean face (0.6-1.0 everywhere) changes nothing: no location is hidden and the
    weights are renormalised. The soft ``mask`` fold would shift every correlation instead."""
    qa, reference = make_qaconv("covisible"), make_qaconv("none")
    prob, gal = maps(5, 1), maps(4, 2)
    vp = 0.6 + 0.4 * torch.ones(5, 1, H, W)
    vg = torch.full((4, 1, H, W), 0.6)
    torch.testing.assert_close(qa(prob, gal, vp, vg), reference(prob, gal), atol=1e-5, rtol=1e-5)
    mask = make_qaconv("mask")
    assert (mask(prob, gal, vp, vg) - reference(prob, gal)).abs().max() > 0.1
