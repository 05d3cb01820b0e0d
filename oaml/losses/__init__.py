"""Losses: pairwise matching and batch-hard triplet on QAConv scores, occlusion-map MSE."""

from __future__ import annotations

from oaml.losses.matching import PairwiseMatchingLoss, TripletLoss
from oaml.losses.occlusion import OcclusionLoss

__all__ = ["OcclusionLoss", "PairwiseMatchingLoss", "TripletLoss"]
