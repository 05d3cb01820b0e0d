from __future__ import annotations

import numpy as np
import pytest

from oaml.evaluation.metrics import (
    balanced_folds,
    best_threshold,
    equal_error_rate,
    kfold_accuracy,
    tar_at_far,
    verification_report,
    visibility_report,
)


def test_best_threshold_separates_a_separable_set() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    issame = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    threshold, acc = best_threshold(scores, issame)
    assert acc == 1.0
    assert 0.3 < threshold < 0.7


def test_best_threshold_never_splits_tied_scores() -> None:
    # Equal scores with different labels: no threshold can get both right.
    scores = np.array([0.5, 0.5, 0.9])
    issame = np.array([0, 1, 1], dtype=bool)
    threshold, acc = best_threshold(scores, issame)
    assert acc == pytest.approx(2 / 3)
    assert ((scores >= threshold) == issame).mean() == pytest.approx(acc)


def test_best_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # many ties
    issame = rng.random(300) < scores.clip(-2, 2) / 4 + 0.5
    _, acc = best_threshold(scores, issame)
    candidates = np.concatenate([[scores.min() - 1], np.unique(scores), [scores.max() + 1]])
    brute = max(((scores >= t) == issame).mean() for t in candidates)
    assert acc == pytest.approx(brute)


def test_kfold_uses_folds_in_file_order_and_held_out_thresholds() -> None:
    # Fold 0 (the first 10 pairs) is labelled the opposite way from the other nine folds: the threshold
    # learnt on the other folds gets every pair of fold 0 wrong, so the mean accuracy is exactly 0.9.
    n = 100
    scores = np.tile([0.0, 1.0], n // 2)
    issame = scores > 0.5
    issame[:10] = ~issame[:10]
    result = kfold_accuracy(scores, issame, num_folds=10)
    assert result["acc"] == pytest.approx(0.9)
    # Folds 1-9 score 1.0 and fold 0 scores 0.0: std = sqrt((0.9^2 + 9 * 0.1^2) / 10) = 0.3.
    assert result["acc_std"] == pytest.approx(0.3)


def test_kfold_is_not_strided_folds_nor_one_global_threshold() -> None:
    # Pairs alternate genuine (1.0) / impostor (0.0), except that the first 10 pairs (fold 0) score 0.2 / 0.1.
    # Held out, fold 0 meets the threshold 0.5 learnt on folds 1-9 and gets its 5 genuine pairs wrong (acc
    # 0.5); every other fold is thresholded between 0.1 and 0.2 and is perfect: acc 0.95, std 0.15. Strided
    # folds (pair i in fold i % 10) spread the low pairs over all folds and a single threshold fitted on all
    # pairs separates them too: both would give 1.0.
    scores = np.tile([1.0, 0.0], 50)
    issame = scores > 0.5
    scores[:10] = np.tile([0.2, 0.1], 5)
    result = kfold_accuracy(scores, issame, num_folds=10)
    assert result["acc"] == pytest.approx(0.95)
    assert result["acc_std"] == pytest.approx(0.15)
    assert best_threshold(scores, issame)[1] == 1.0


def test_folds_are_insightfaces_contiguous_folds_on_a_standard_bin() -> None:
    # LFW / CFP-FP / AgeDB-30 / CALFW / CPLFW layout: ten blocks, each half genuine then half impostor. The
    # published numbers use contiguous tenths; on this layout the balanced folds must be exactly those.
    issame = np.tile(np.repeat([True, False], 30), 10)
    contiguous = np.repeat(np.arange(10), 60)
    assert np.array_equal(balanced_folds(issame, 10), contiguous)


def test_one_class_runs_still_give_balanced_folds_and_an_unbiased_accuracy() -> None:
    # lfw_dev.bin's layout (LFW folds 8 and 9): long runs of one class. Contiguous tenths would give folds of
    # one class, each scored at a threshold fitted on the other, tilted nine: about 3 points below the
    # best-threshold accuracy for these two unit Gaussians (0.796 against 0.839 for seed 0).
    issame = np.concatenate(
        [np.ones(278, bool), np.zeros(279, bool), np.ones(274, bool), np.zeros(284, bool)]
    )
    folds = balanced_folds(issame, 10)
    genuine = np.bincount(folds[issame], minlength=10)
    impostor = np.bincount(folds[~issame], minlength=10)
    assert set(genuine) <= {55, 56} and set(impostor) <= {56, 57}
    rng = np.random.default_rng(0)
    scores = np.where(issame, rng.normal(1.0, 1.0, issame.size), rng.normal(-1.0, 1.0, issame.size))
    _, best = best_threshold(scores, issame)
    assert best - 0.02 < kfold_accuracy(scores, issame, num_folds=10)["acc"] <= best


def test_kfold_rejects_too_few_pairs_and_nan() -> None:
    with pytest.raises(ValueError, match="at least 20 pairs"):
        kfold_accuracy(np.zeros(10), np.zeros(10, dtype=bool))
    scores = np.zeros(40)
    scores[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy(scores, np.zeros(40, dtype=bool))


def test_tar_at_far_counts_impostors_above_threshold() -> None:
    impostors = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.9985, 0.9995, 0.5, 0.2])
    scores = np.concatenate([impostors, genuine])
    issame = np.concatenate([np.zeros(1000, bool), np.ones(4, bool)])
    # FAR 1e-3 allows one impostor (0.999) above the threshold 0.998: two genuine pairs pass.
    assert tar_at_far(scores, issame, 1e-3) == pytest.approx(0.5)
    # 1000 impostors cannot measure FAR 1e-4.
    assert tar_at_far(scores, issame, 1e-4) is None


def test_equal_error_rate_of_known_distributions() -> None:
    scores = np.array([0.0, 1.0, 2.0, 3.0, 1.5, 2.5, 3.5, 4.5])
    issame = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    # At t=2.5: FAR 1/4 (impostor 3.0), FRR 1/4 (genuine 1.5).
    assert equal_error_rate(scores, issame) == pytest.approx(0.25)
    assert equal_error_rate(np.arange(8.0), np.arange(8) >= 4) == pytest.approx(0.0)


def test_verification_report_keys() -> None:
    rng = np.random.default_rng(1)
    issame = np.arange(2000) % 2 == 0
    scores = rng.normal(size=2000) + 2.0 * issame
    report = verification_report(scores, issame)
    assert {"acc", "acc_std", "threshold", "tar_at_far_1e-03", "eer"} <= set(report)
    assert "tar_at_far_1e-04" not in report  # 1000 impostors cannot measure 1e-4
    assert 0.8 < report["acc"] < 0.9  # d' = 2: Bayes accuracy 0.841


def test_visibility_report_measures_hidden_region() -> None:
    target = np.ones((2, 2, 2))
    target[1, 1, :] = 0.0  # second face: lower half hidden
    predicted = np.ones((2, 2, 2))
    predicted[1, 1, 0] = 0.2  # predicts one of the two hidden cells
    report = visibility_report(predicted, target, occluded=np.array([False, True]))
    assert report["occ_iou"] == pytest.approx(0.5)
    assert report["occ_mse"] == pytest.approx((0.2**2 + 1.0) / 8)  # cells (1,1,0) and (1,1,1)
    assert report["visibility_clean"] == pytest.approx(1.0)
    assert report["visibility_occluded"] == pytest.approx((3 + 0.2) / 4)


def test_arguments_are_validated() -> None:
    scores = np.linspace(0.0, 1.0, 40)
    issame = np.arange(40) % 2 == 0
    for far in (0.0, 1.0, -1e-3, 2.0, float("nan")):
        with pytest.raises(ValueError, match="far"):
            tar_at_far(scores, issame, far)
    for folds in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_folds"):
            kfold_accuracy(scores, issame, num_folds=folds)
    assert kfold_accuracy(scores, issame, num_folds=np.int64(2))["acc"] >= 0.0
    # issame must be labels: a score, a class id or NaN would all silently cast to True.
    for bad in (scores, np.arange(40), np.where(issame, 1.0, np.nan), np.array(["same"] * 40)):
        with pytest.raises(ValueError, match="issame"):
            kfold_accuracy(scores, bad)
    ints = kfold_accuracy(scores, issame.astype(int))
    floats = kfold_accuracy(scores, issame.astype(float))
    assert ints == floats == kfold_accuracy(scores, issame)
