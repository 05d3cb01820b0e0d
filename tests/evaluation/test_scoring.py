"""The pair scorer: flip fusion of embeddings only, unflipped maps, fused score, pair splitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oaml.evaluation.scoring import FaceFeatures, embed_faces, score_pairs, split_pairs
from oaml.models import IResNet, QAConv
from oaml.models.score_norm import ImpostorScoreNorm

# Three stride-2 stages after a stride-2 stem: 112 -> 7, as ir_nano, but smaller.
TINY = dict(
    units=(1, 1, 1),
    channels=(16, 32, 32),
    stem_channels=8,
    stem_stride=2,
    embedding_size=16,
    occlusion_hidden_channels=8,
)


@pytest.fixture(scope="module")
def backbone() -> IResNet:
    torch.manual_seed(0)
    model = IResNet(**TINY)
    with torch.no_grad():  # trained-looking BN statistics and a non-constant visibility map
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.2)
        model.occlusion_head.conv2.weight.normal_(0.0, 0.3)
        model.occlusion_head.conv2.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def features(backbone: IResNet, images: torch.Tensor) -> FaceFeatures:
    return embed_faces(backbone, images, flip=True)


def test_flip_fuses_raw_embeddings_only(
    backbone: IResNet, images: torch.Tensor, features: FaceFeatures
) -> None:
    with torch.no_grad():
        embedding, norm, visibility, maps = backbone(images, return_occlusion=True)
        embedding_f, norm_f = backbone(torch.flip(images, dims=[3]))
    expected = F.normalize(embedding * norm + embedding_f * norm_f, dim=1)
    torch.testing.assert_close(features.embedding, expected, atol=1e-6, rtol=1e-5)
    # The norms differ between the views, so summing unit embeddings would give another direction.
    assert (norm - norm_f).abs().max() > 1e-2
    unweighted = F.normalize(embedding + embedding_f, dim=1)
    assert (features.embedding - unweighted).abs().max() > 1e-4
    # QAConv maps and visibility are the unflipped view's, not a blend with the flipped-back mirror.
    torch.testing.assert_close(features.feature_maps, maps)
    torch.testing.assert_close(features.visibility, visibility)
    assert visibility.std() > 1e-2  # a constant map would not show a blend


def test_without_flip_everything_is_the_single_view(
    backbone: IResNet, images: torch.Tensor, features: FaceFeatures
) -> None:
    single = embed_faces(backbone, images, flip=False)
    with torch.no_grad():
        embedding, _, visibility, maps = backbone(images, return_occlusion=True)
    torch.testing.assert_close(single.embedding, embedding, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(single.feature_maps, maps)
    torch.testing.assert_close(single.visibility, visibility)
    assert (single.embedding - features.embedding).abs().max() > 1e-4


def test_split_pairs_interleaves_and_rejects_odd_batches(features: FaceFeatures) -> None:
    first, second = split_pairs(features)
    torch.testing.assert_close(first.embedding, features.embedding[[0, 2]])
    torch.testing.assert_close(second.feature_maps, features.feature_maps[[1, 3]])
    torch.testing.assert_close(second.visibility, features.visibility[[1, 3]])
    odd = FaceFeatures(features.embedding[:3], features.feature_maps[:3], features.visibility[:3])
    with pytest.raises(ValueError, match="even number"):
        split_pairs(odd)


def test_scores_and_fusion(features: FaceFeatures) -> None:
    first, second = split_pairs(features)
    matcher = QAConv(32, 7, 7, weighting="mask").eval()
    scores = score_pairs(first, second, matcher, {"adaface": 0.3, "qaconv": 0.7})
    cosine = (first.embedding * second.embedding).sum(dim=1)
    qaconv = matcher.pair_scores(first.feature_maps, second.feature_maps, first.visibility, second.visibility)
    torch.testing.assert_close(scores["adaface"], cosine)
    torch.testing.assert_close(scores["qaconv"], qaconv)
    torch.testing.assert_close(
        scores["qaconv_novis"], matcher.pair_scores(first.feature_maps, second.feature_maps)
    )
    assert (scores["qaconv"] - scores["qaconv_novis"]).abs().max() > 1e-4  # visibility is used
    torch.testing.assert_close(scores["fused"], 0.3 * cosine + 0.7 * torch.sigmoid(qaconv))


@pytest.mark.parametrize("missing", ["adaface", "qaconv"])
def test_missing_fusion_weight_names_the_config_key(features: FaceFeatures, missing: str) -> None:
    first, second = split_pairs(features)
    matcher = QAConv(32, 7, 7).eval()
    fusion = {"adaface": 0.5, "qaconv": 0.5}
    del fusion[missing]
    with pytest.raises(ValueError, match=rf"val\.fusion\.{missing}"):
        score_pairs(first, second, matcher, fusion)


def test_impostor_normalised_fusion(features: FaceFeatures) -> None:
    """``normalize: impostor`` adds the z-scores of both branches; before any statistics it falls back to the
    fixed formula; an unknown normalisation names the key."""
    first, second = split_pairs(features)
    matcher = QAConv(32, 7, 7, weighting="covisible").eval()
    fusion = {"normalize": "impostor", "adaface": 0.3, "qaconv": 0.7}
    norm = ImpostorScoreNorm(("adaface", "qaconv"))
    fixed = score_pairs(first, second, matcher, fusion, norm)
    torch.testing.assert_close(fixed["fused"], 0.3 * fixed["adaface"] + 0.7 * torch.sigmoid(fixed["qaconv"]))
    with torch.no_grad():
        norm.mean.copy_(torch.tensor([0.1, -2.0]))
        norm.var.copy_(torch.tensor([0.04, 9.0]))
        norm.num_updates.fill_(1)
    scores = score_pairs(first, second, matcher, fusion, norm)
    expected = 0.3 * (scores["adaface"] - 0.1) / 0.2 + 0.7 * (scores["qaconv"] + 2.0) / 3.0
    torch.testing.assert_close(scores["fused"], expected)
    with pytest.raises(ValueError, match=r"val\.fusion\.normalize"):
        score_pairs(first, second, matcher, {**fusion, "normalize": "zscore"}, norm)


def test_pair_erasure_erases_both_faces_where_either_is_hidden() -> None:
    """val.erase=pair: each face of pair (2i, 2i+1) is embedded erased by the union of both faces' hidden
    cells (mirror view included), not by its own map alone."""
    torch.manual_seed(0)
    model = IResNet(**{**TINY, "occlusion_input_stage": "image", "occlusion_erase": True}).eval()
    with torch.no_grad():
        model.occlusion_head.conv2.weight.normal_(0.0, 3.0)  # a map with hidden and visible cells
    images = torch.randn(4, 3, 112, 112)
    own = model.occlusion_head(images)
    union = torch.minimum(own[0::2], own[1::2]).repeat_interleave(2, dim=0)
    assert (own >= 0.5).any() and (union < 0.5).sum() > (own < 0.5).sum()

    features = embed_faces(model, images, pair_erasure=True)
    embedding, norm = model(images, erase_visibility=union)
    mirrored, norm_m = model(torch.flip(images, dims=[3]), erase_visibility=torch.flip(union, dims=[3]))
    torch.testing.assert_close(features.embedding, F.normalize(embedding * norm + mirrored * norm_m, dim=1))
    torch.testing.assert_close(features.visibility, own)  # each face's own map, for the metrics
    # The same cells given directly (how a study erases by true masks) embed the same way.
    given = embed_faces(model, images, erase_visibility=union)
    torch.testing.assert_close(given.embedding, features.embedding)
    with pytest.raises(ValueError, match="not both"):
        embed_faces(model, images, pair_erasure=True, erase_visibility=union)
    assert not torch.allclose(features.embedding, embed_faces(model, images).embedding)
    # Pixels only the partner hides (here: all of them, repainted) no longer reach the embedding.
    keep = F.interpolate((union >= 0.5).float(), size=(112, 112), mode="nearest")
    repainted = images * keep + torch.randn_like(images) * 4 * (1 - keep)
    torch.testing.assert_close(model(repainted, erase_visibility=union)[0], embedding)


def test_val_erase_must_be_own_or_pair() -> None:
    from oaml.training.module import OAMLModule

    with pytest.raises(ValueError, match="val.erase"):
        OAMLModule(*[torch.nn.Identity()] * 5, loss_weights={}, val_erasure="both")
