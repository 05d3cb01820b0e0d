"""Verification metrics over per-pair scores: pure numpy functions, no torch, no Lightning.

The protocol is the one LFW-style benchmarks use (and InsightFace's ``verification.py`` implements): the pairs
are split into 10 folds in file order; on each fold the threshold that maximises accuracy on the other nine
folds is applied, and the reported accuracy is the mean over the folds. Each fold takes the next tenth of the
genuine pairs and the next tenth of the impostor pairs, both in file order. For the standard bins (LFW, CFP-FP,
AgeDB-30, CALFW, CPLFW: ten equal blocks of half genuine, half impostor pairs) these are exactly InsightFace's
contiguous folds; for a set stored as longer one-class runs they are still balanced. LFW's folds 8 and 9 alone
(``lfw_dev.bin``: 278 genuine, 279 impostor, 274 genuine, 284 impostor) cut into ten contiguous tenths give folds
of one class each: every fold then scores only its true-accept or only its true-reject rate at a threshold
fitted on the other nine folds, whose class balance tilts against it, and the mean came out 2-7 points below
the best single-threshold accuracy of the same scores (study of issue 10, table 10). Higher scores mean
"same identity" for every score this project produces (cosine similarity, QAConv logits, fused scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _check_scores(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(issame).reshape(-1)
    if labels.dtype != bool:
        # Casting to bool would read any nonzero value (a score, a class id, NaN) as "same": refuse instead.
        bad = (
            ~np.isin(labels, (0, 1)) if np.issubdtype(labels.dtype, np.number) else np.ones(labels.size, bool)
        )
        if bad.any():
            raise ValueError(
                f"issame must hold only 0/1 or True/False per pair, got {bad.sum()} other values "
                f"(e.g. {labels[bad].tolist()[0]!r}); pass the pair labels, not scores or identities"
            )
    issame = labels.astype(bool)
    if scores.shape != issame.shape:
        raise ValueError(
            f"scores ({scores.shape[0]}) and issame ({issame.shape[0]}) must have one entry per pair"
        )
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(
            f"{bad} of {scores.size} pair scores are NaN or infinite; the model diverged or an input was "
            "broken. Refusing to compute metrics on them."
        )
    return scores, issame


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score >= threshold`` on these pairs, and that accuracy.

    Candidates are the midpoints between consecutive distinct scores (plus both ends), evaluated in
    O(n log n) with cumulative counts instead of one pass per candidate.
    """
    scores, issame = _check_scores(scores, issame)
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], issame[order]
    n = s.size
    # Predicting "same" for indices >= i: correct = negatives below i + positives from i on.
    neg_below = np.concatenate([[0], np.cumsum(~y)])
    pos_from = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    correct = neg_below + pos_from  # index i = number of pairs predicted "different"
    # Only cut between distinct scores: a threshold cannot separate equal scores.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] != s[:-1]
    best = int(np.flatnonzero(valid)[np.argmax(correct[valid])])
    if best == 0:
        threshold = s[0] - 1.0
    elif best == n:
        threshold = s[-1] + 1.0
    else:
        threshold = 0.5 * (s[best - 1] + s[best])
    return float(threshold), float(correct[best] / n)


def balanced_folds(issame: np.ndarray, num_folds: int) -> np.ndarray:
    """Fold index per pair: fold k holds the k-th tenth (for 10 folds) of the genuine pairs and the k-th tenth of
    the impostor pairs, each class in file order (see the module docstring for why not plain contiguous tenths)."""
    issame = np.asarray(issame, dtype=bool)
    folds = np.empty(issame.size, dtype=int)
    for label in (True, False):
        members = np.flatnonzero(issame == label)
        folds[members] = np.arange(members.size) * num_folds // max(members.size, 1)
    return folds


def kfold_accuracy(scores: np.ndarray, issame: np.ndarray, num_folds: int = 10) -> dict[str, float]:
    """Mean and std of accuracy over the folds of ``balanced_folds``, each thresholded on the other folds."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, np.integer)) or num_folds < 2:
        raise ValueError(f"num_folds must be an int >= 2 (the protocol uses 10), got {num_folds!r}")
    scores, issame = _check_scores(scores, issame)
    n = scores.size
    if n < 2 * num_folds:
        raise ValueError(f"{num_folds}-fold accuracy needs at least {2 * num_folds} pairs, got {n}")
    folds = balanced_folds(issame, num_folds)
    accs, thresholds = [], []
    for fold in range(num_folds):
        test = folds == fold
        threshold, _ = best_threshold(scores[~test], issame[~test])
        accs.append(np.mean((scores[test] >= threshold) == issame[test]))
        thresholds.append(threshold)
    return {
        "acc": float(np.mean(accs)),
        "acc_std": float(np.std(accs)),
        "threshold": float(np.mean(thresholds)),
    }


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float | None:
    """True accept rate at the threshold that accepts a fraction ``far`` of impostor pairs.

    Returns None when the set has fewer than ``1/far`` impostor pairs: the operating point is then not
    measurable, and reporting a number would be a guess.
    """
    if not 0.0 < far < 1.0:
        raise ValueError(f"far (false accept rate) must be in (0, 1), e.g. 1e-3, got {far!r}")
    scores, issame = _check_scores(scores, issame)
    impostors = np.sort(scores[~issame])[::-1]
    genuine = scores[issame]
    if impostors.size < math.ceil(1.0 / far) or genuine.size == 0:
        return None
    allowed = int(math.floor(far * impostors.size))  # number of impostors allowed above the threshold
    threshold = impostors[allowed]  # accept strictly above: exactly `allowed` impostors pass
    return float(np.mean(genuine > threshold))


def equal_error_rate(scores: np.ndarray, issame: np.ndarray) -> float:
    """Error rate where false accept and false reject rates cross (interpolated between thresholds)."""
    scores, issame = _check_scores(scores, issame)
    if issame.all() or (~issame).all():
        raise ValueError("EER needs both genuine and impostor pairs")
    thresholds = np.unique(scores)
    thresholds = np.concatenate([[thresholds[0] - 1.0], thresholds, [thresholds[-1] + 1.0]])
    genuine, impostors = np.sort(scores[issame]), np.sort(scores[~issame])
    # Accept when score >= t.
    far = 1.0 - np.searchsorted(impostors, thresholds, side="left") / impostors.size
    frr = np.searchsorted(genuine, thresholds, side="left") / genuine.size
    diff = far - frr  # decreasing in t
    i = int(np.flatnonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(0.5 * (far[i] + frr[i]))
    # Linear interpolation between thresholds i-1 (diff > 0) and i (diff <= 0).
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    return float((1 - w) * 0.5 * (far[i - 1] + frr[i - 1]) + w * 0.5 * (far[i] + frr[i]))


def verification_report(
    scores: np.ndarray, issame: np.ndarray, fars: Sequence[float] = (1e-3, 1e-4), num_folds: int = 10
) -> dict[str, float]:
    """All verification metrics of one score on one set, as a flat dict (``acc``, ``tar_at_far_1e-03``, ``eer``).

    Operating points a set is too small for are left out rather than reported as a guess.
    """
    report = kfold_accuracy(scores, issame, num_folds)
    for far in fars:
        tar = tar_at_far(scores, issame, far)
        if tar is not None:
            report[f"tar_at_far_{far:.0e}"] = tar
    report["eer"] = equal_error_rate(scores, issame)
    return report


def visibility_report(predicted: np.ndarray, target: np.ndarray, occluded: np.ndarray) -> dict[str, float]:
    """OcclusionHead quality where the true visibility is known.

    ``predicted`` and ``target`` are [N,h,w] in [0,1]; ``occluded`` marks faces whose target hides anything.
    IoU is measured on the *hidden* region (both thresholded at 0.5): the visible region covers most of
    every face, so its IoU would be near 1 for a head that predicts "all visible".
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    occluded = np.asarray(occluded, dtype=bool)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} visibility differ in shape")
    report = {"occ_mse": float(np.mean((predicted - target) ** 2))}
    hidden_pred, hidden_true = predicted < 0.5, target < 0.5
    union = np.logical_or(hidden_pred, hidden_true).sum()
    if union > 0:
        report["occ_iou"] = float(np.logical_and(hidden_pred, hidden_true).sum() / union)
    per_face = predicted.reshape(predicted.shape[0], -1).mean(axis=1)
    if (~occluded).any():
        report["visibility_clean"] = float(per_face[~occluded].mean())
    if occluded.any():
        report["visibility_occluded"] = float(per_face[occluded].mean())
    return report
