"""The one pair scorer shared by validation during training and by ``python -m oaml.evaluate``.

Every image is embedded together with its horizontal mirror. The two views are fused by summing raw
features (the InsightFace protocol): the raw embedding is ``embedding * norm`` before re-normalising, the
mirror's feature map and visibility map are flipped back so that location (i, j) means the same face
region in both views. Each pair (2i, 2i+1) is then scored four ways:

- ``adaface``: cosine of the fused embeddings;
- ``qaconv``: QAConv logit with the predicted visibility of both faces, in the matcher's weighting mode;
- ``qaconv_novis``: QAConv logit with visibility ignored (what occlusion awareness adds is the difference);
- ``fused``: ``w_adaface * cosine + w_qaconv * sigmoid(qaconv)`` with fixed weights from the config. Nothing
  is fitted on the evaluation pairs, so the fused score stays an honest test-set number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCORE_NAMES = ("adaface", "qaconv", "qaconv_novis", "fused")


@dataclass
class FaceFeatures:
    """What the scorer keeps of a batch of faces: unit embeddings, feature maps and predicted visibility."""

    embedding: Tensor  # [N, E], unit L2 norm
    feature_maps: Tensor  # [N, C, h, w]
    visibility: Tensor  # [N, 1, h, w] in [0, 1]


def _embed_view(backbone: nn.Module, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    embedding, norm, visibility, feature_maps = backbone(images, return_occlusion=True)
    return embedding * norm, feature_maps, visibility


@torch.no_grad()
def embed_faces(backbone: nn.Module, images: Tensor, flip: bool = True) -> FaceFeatures:
    """Embed normalised images [N,3,H,W]; with ``flip`` the mirrored view is fused in."""
    raw, maps, visibility = _embed_view(backbone, images)
    if flip:
        raw_f, maps_f, visibility_f = _embed_view(backbone, torch.flip(images, dims=[3]))
        raw = raw + raw_f
        maps = maps + torch.flip(maps_f, dims=[3])
        visibility = 0.5 * (visibility + torch.flip(visibility_f, dims=[3]))
    return FaceFeatures(F.normalize(raw.float(), dim=1), maps.float(), visibility.float())


def split_pairs(features: FaceFeatures) -> tuple[FaceFeatures, FaceFeatures]:
    """Split interleaved features (pair i = rows 2i and 2i+1) into first and second images."""
    if features.embedding.shape[0] % 2:
        raise ValueError("a batch of verification images must hold whole pairs (an even number of images)")
    first = FaceFeatures(features.embedding[0::2], features.feature_maps[0::2], features.visibility[0::2])
    second = FaceFeatures(features.embedding[1::2], features.feature_maps[1::2], features.visibility[1::2])
    return first, second


@torch.no_grad()
def score_pairs(
    first: FaceFeatures, second: FaceFeatures, matcher: nn.Module, fusion: Mapping[str, float]
) -> dict[str, Tensor]:
    """Four scores per pair, each a tensor [N]; higher means more likely the same person."""
    cosine = (first.embedding * second.embedding).sum(dim=1)
    qaconv = matcher.pair_scores(first.feature_maps, second.feature_maps, first.visibility, second.visibility)
    qaconv_novis = matcher.pair_scores(first.feature_maps, second.feature_maps)
    fused = fusion["adaface"] * cosine + fusion["qaconv"] * torch.sigmoid(qaconv)
    return {"adaface": cosine, "qaconv": qaconv, "qaconv_novis": qaconv_novis, "fused": fused}
