"""Losses on QAConv's ``[B, B]`` self-matching logits: pairwise matching (BCE) and batch-hard triplet.

Reference: Shengcai Liao and Ling Shao, "Graph Sampling Based Deep Metric Learning for Generalizable Person
Re-Identification", CVPR 2022. Checked against ShengcaiLiao/QAConv ``reid/loss/pairwise_matching_loss.py`` and
``reid/loss/triplet_loss.py`` (V1.1, Jan 2023) and its trainer (``reid/trainers.py``):

- pairwise: BCE with logits of every entry of the self-match against ``labels[i] == labels[j]`` (the diagonal,
  a self-pair, is a positive and is included), summed over the gallery axis, then averaged over probes;
- triplet: for each probe the lowest-scoring positive other than itself and the highest-scoring negative,
  hinge ``max(0, margin - (min_pos - max_neg))`` with margin 16 on the unsquashed logits, averaged over probes;
- accuracy: a probe is correct when its lowest positive (self excluded) is above its highest negative.

Differences from the reference, on purpose: the reference treats a probe with no other positive (or no negative)
as correct with zero triplet loss and silently drops non-finite losses; here such probes are left out of the
accuracy and the triplet mean, a batch with none usable is an error for the triplet loss (and gives a NaN
accuracy), and non-finite losses propagate. The reference's triplet accuracy counts a tie (``min_pos >=
max_neg``) as correct while its pairwise accuracy does not (``>``); here a tie is wrong for both, so the two
accuracies agree on the same scores (a tie does not separate the pair). The QAConv scores must be computed
with gradients on the backbone's feature maps (no ``no_grad``, no ``detach``) for these losses to train the
backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_inputs(scores: Tensor, labels: Tensor, who: str) -> None:
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"{who}: scores must be a square [B, B] self-match, got shape {list(scores.shape)}")
    if labels.dim() != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{who}: labels must have shape [{scores.shape[0]}] (one identity per row of scores), "
            f"got {list(labels.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"{who}: scores must be floating point logits, got {scores.dtype}")


def hardest_pairs(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per probe: lowest positive score (self excluded), highest negative score, and whether both exist.

    Returns ``(min_pos [B], max_neg [B], valid [B] bool)``; ``min_pos`` is +inf without another positive and
    ``max_neg`` is -inf without a negative.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    self_pair = torch.eye(len(labels), dtype=torch.bool, device=scores.device)
    positives = same & ~self_pair
    min_pos = scores.masked_fill(~positives, float("inf")).amin(dim=1)
    max_neg = scores.masked_fill(same, float("-inf")).amax(dim=1)
    valid = positives.any(dim=1) & (~same).any(dim=1)
    return min_pos, max_neg, valid


def matching_accuracy(min_pos: Tensor, max_neg: Tensor, valid: Tensor) -> Tensor:
    """Fraction of usable probes whose lowest positive beats their highest negative (NaN if none is usable)."""
    with torch.no_grad():
        correct = (min_pos > max_neg) & valid
        return correct.sum().float() / valid.sum().float()


class PairwiseMatchingLoss(nn.Module):
    """QAConv 2.0 pairwise matching loss: ``mean_i sum_j BCEWithLogits(scores[i, j], labels[i] == labels[j])``.

    Returns ``(loss, acc)``, both scalar tensors; ``acc`` carries no gradient.
    """

    def forward(self, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        _check_inputs(scores, labels, "PairwiseMatchingLoss")
        targets = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(scores.dtype)
        loss = F.binary_cross_entropy_with_logits(scores, targets, reduction="none").sum(dim=1).mean()
        return loss, matching_accuracy(*hardest_pairs(scores.detach(), labels))


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on QAConv logits (QAConv 2.1): ``mean_i max(0, margin - min_pos_i + max_neg_i)``.

    The margin is in logit units (16 in the reference, since QAConv logits are not squashed to [-1, 1]).
    Returns ``(loss, acc)``, both scalar tensors; ``acc`` carries no gradient.
    """

    def __init__(self, margin: float = 16.0) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"TripletLoss: margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def forward(self, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        _check_inputs(scores, labels, "TripletLoss")
        min_pos, max_neg, valid = hardest_pairs(scores, labels)
        if not bool(valid.any()):
            raise ValueError(
                "TripletLoss: no probe in the batch has both another image of its identity and an image of a "
                "different identity; sample >= 2 identities x >= 2 images each (IdentityBalancedBatchSampler)"
            )
        loss = F.relu(max_neg[valid] - min_pos[valid] + self.margin).mean()
        return loss, matching_accuracy(min_pos.detach(), max_neg.detach(), valid)
