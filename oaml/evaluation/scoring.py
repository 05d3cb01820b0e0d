"""The one pair scorer shared by validation during training and by ``python -m oaml.evaluate``.

Every image is embedded together with its horizontal mirror, and only the *embeddings* are fused: the raw
features ``embedding * norm`` of both views are summed before re-normalising (the InsightFace protocol).
QAConv's feature maps and the visibility maps come from the unflipped view alone. Flipping the mirror's maps
back does not align them with the original's: a stride-2 3x3 conv with padding 1 centres its outputs on
input columns 0, 2, 4, ... but, on the mirror, on columns W-1, W-3, ..., i.e. on the odd columns once flipped
back. The offset of one input pixel per stride-2 stage adds up to about one cell of the final 7x7 map:
summing the views would blur the maps QAConv matches and the visibility the occlusion metrics measure.
Each pair (2i, 2i+1) is then scored four ways:

- ``adaface``: cosine of the fused embeddings;
- ``qaconv``: QAConv logit with the predicted visibility of both faces, in the matcher's weighting mode;
- ``qaconv_novis``: QAConv logit with visibility ignored (what occlusion awareness adds is the difference);
- ``fused``: with ``val.fusion.normalize: impostor`` (the default), ``w_adaface * z(cosine) + w_qaconv *
  z(qaconv)``, each score z-normalised by the impostor statistics the model gathered on its *training* batches
  (:class:`oaml.models.score_norm.ImpostorScoreNorm`), so that both are on one scale; with ``normalize: none``,
  ``w_adaface * cosine + w_qaconv * sigmoid(qaconv)``. Nothing is fitted on the evaluation pairs, so the fused
  score stays an honest test-set number. A model that has not trained a step has no statistics yet and is
  fused the fixed way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oaml.errors import ConfigError
from oaml.models.score_norm import ImpostorScoreNorm

SCORE_NAMES = ("adaface", "qaconv", "qaconv_novis", "fused")
FUSION_KEYS = ("adaface", "qaconv")
FUSION_NORMALIZATIONS = ("impostor", "none")


@dataclass
class FaceFeatures:
    """What the scorer keeps of a batch of faces: unit embeddings, feature maps and predicted visibility."""

    embedding: Tensor  # [N, E], unit L2 norm
    feature_maps: Tensor  # [N, C, h, w]
    visibility: Tensor  # [N, 1, h, w] in [0, 1]


@torch.no_grad()
def embed_faces(
    backbone: nn.Module,
    images: Tensor,
    flip: bool = True,
    pair_erasure: bool = False,
    erase_visibility: Tensor | None = None,
) -> FaceFeatures:
    """Embed normalised images [N,3,H,W]; with ``flip`` the mirror's raw embedding is added to the image's.

    Feature maps and visibility are always the unflipped view's (see the module docstring). With
    ``pair_erasure`` and a backbone that erases hidden cells (``occlusion.erase``), the images are pairs
    (2i, 2i+1) and both faces of a pair are erased where *either* is hidden (``val.erase: pair``): both
    embeddings then describe the same part of the face. ``erase_visibility`` ([N, 1, h, w]) gives such a
    backbone the cells to erase directly (e.g. true masks, in a study). The returned visibility stays each
    face's own.
    """
    erase = erase_visibility
    if pair_erasure and getattr(backbone, "occlusion_erase", False):
        if erase is not None:
            raise ValueError("embed_faces: give pair_erasure or erase_visibility, not both")
        if images.shape[0] % 2:
            raise ValueError(
                "pair erasure needs whole pairs (an even number of images, pair i = rows 2i, 2i+1)"
            )
        own = backbone.occlusion(images)
        erase = torch.minimum(own[0::2], own[1::2]).repeat_interleave(2, dim=0)
    extra = {} if erase is None else {"erase_visibility": erase}
    embedding, norm, visibility, feature_maps = backbone(images, return_occlusion=True, **extra)
    raw = embedding * norm
    if flip:
        # A grid cell's pixel block mirrors onto the mirrored cell's block exactly (the grid divides the image).
        extra_f = {} if erase is None else {"erase_visibility": torch.flip(erase, dims=[3])}
        embedding_f, norm_f = backbone(torch.flip(images, dims=[3]), **extra_f)
        raw = raw + embedding_f * norm_f
    return FaceFeatures(F.normalize(raw.float(), dim=1), feature_maps.float(), visibility.float())


def split_pairs(features: FaceFeatures) -> tuple[FaceFeatures, FaceFeatures]:
    """Split interleaved features (pair i = rows 2i and 2i+1) into first and second images."""
    if features.embedding.shape[0] % 2:
        raise ValueError("a batch of verification images must hold whole pairs (an even number of images)")
    first = FaceFeatures(features.embedding[0::2], features.feature_maps[0::2], features.visibility[0::2])
    second = FaceFeatures(features.embedding[1::2], features.feature_maps[1::2], features.visibility[1::2])
    return first, second


@torch.no_grad()
def score_pairs(
    first: FaceFeatures,
    second: FaceFeatures,
    matcher: nn.Module,
    fusion: Mapping[str, float | str],
    score_norm: ImpostorScoreNorm | None = None,
) -> dict[str, Tensor]:
    """Four scores per pair, each a tensor [N]; higher means more likely the same person.

    ``fusion`` holds the weights ``adaface`` and ``qaconv`` of the fused score and optionally ``normalize``
    (config ``val.fusion``); ``score_norm`` the impostor statistics that ``normalize: impostor`` uses.
    """
    check_fusion(fusion)
    cosine = (first.embedding * second.embedding).sum(dim=1)
    qaconv = matcher.pair_scores(first.feature_maps, second.feature_maps, first.visibility, second.visibility)
    qaconv_novis = matcher.pair_scores(first.feature_maps, second.feature_maps)
    if fusion.get("normalize", "none") == "impostor" and score_norm is not None and score_norm.ready:
        z_adaface, z_qaconv = score_norm.normalize("adaface", cosine), score_norm.normalize("qaconv", qaconv)
        fused = fusion["adaface"] * z_adaface + fusion["qaconv"] * z_qaconv
    else:
        fused = fusion["adaface"] * cosine + fusion["qaconv"] * torch.sigmoid(qaconv)
    return {"adaface": cosine, "qaconv": qaconv, "qaconv_novis": qaconv_novis, "fused": fused}


def check_fusion(fusion: Mapping[str, float | str]) -> None:
    """Refuse a ``val.fusion`` without both weights or with an unknown normalisation, naming the key."""
    missing = [key for key in FUSION_KEYS if key not in fusion]
    if missing:
        raise ConfigError(
            f"fusion weights lack {', '.join(f'val.fusion.{key}' for key in missing)}: give both "
            f"val.fusion.adaface and val.fusion.qaconv (got {sorted(fusion)})"
        )
    normalize = fusion.get("normalize", "none")
    if normalize not in FUSION_NORMALIZATIONS:
        raise ConfigError(f"val.fusion.normalize must be one of {FUSION_NORMALIZATIONS}, got {normalize!r}")
