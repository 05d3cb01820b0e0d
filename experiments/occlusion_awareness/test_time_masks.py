"""Study tool: score a checkpoint's QAConv on the synthetic val pairs with hidden cells removed at test time,
from the predicted or the *true* visibility (an oracle), summing, sqrt-normalising or averaging the co-visible
terms. It re-derives QAConv's pair score from the model's own BatchNorm and fc (eval mode), so the variants
differ only in which terms count.

    python experiments/occlusion_awareness/test_time_masks.py outputs/oa/I_img_bce1_s42/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from oaml.data.pipeline.normalize import normalize_faces
from oaml.data.synthetic.datasets import SyntheticPairs
from oaml.evaluation.metrics import verification_report
from oaml.evaluation.scoring import embed_faces
from oaml.losses.occlusion import downsample_visibility
from oaml.training.build import model_from_checkpoint
from oaml.training.checkpoint import load_checkpoint
from oaml.training.module import OAMLModule


def pair_scores(qa, corr: torch.Tensor, vis_a, vis_b, power: float) -> torch.Tensor:
    """QAConv scores of pairs from their correlations ``[N, s, r]``; hidden cells (< 0.5) excluded from the
    maxima and their terms dropped; the rest summed and scaled by ``(hw / n_covisible) ** power``."""
    hw = corr.shape[1]
    if vis_a is None:
        masked, keep = corr, torch.ones(corr.shape[0], hw)
    else:
        hard_a, hard_b = (vis_a.flatten(1) >= 0.5).float(), (vis_b.flatten(1) >= 0.5).float()
        masked = hard_a[:, :, None] * hard_b[:, None, :] * (corr + 1) - 1
        keep = hard_a * hard_b
    bn = qa.bn

    def normed(t):
        return (t - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias

    scale = (hw / keep.sum(1, keepdim=True).clamp_min(1e-6)) ** power
    weight = qa.fc.weight[0]
    return (normed(masked.max(2).values) * keep * scale) @ weight + (
        normed(masked.max(1).values) * keep * scale
    ) @ weight


def study_val_pairs(occluded: bool) -> tuple[SyntheticPairs, torch.Tensor, torch.Tensor]:
    """The study's 600 synthetic val pairs (``conf/val/synthetic.yaml``, val.seed 0): the set, its normalised
    images (pair i = rows 2i, 2i+1) and their true visibility on the 7x7 grid."""
    pairs = SyntheticPairs(
        num_pairs=600, num_identities=300, seed=0, image_size=112, first_identity=100000, occluded=occluded
    )
    images, masks = zip(*(pairs[i] for i in range(len(pairs))))
    truth = downsample_visibility(torch.stack(masks).float(), (7, 7))
    return pairs, normalize_faces(torch.stack(images)), truth


def study_model(checkpoint_path: str) -> OAMLModule:
    """A checkpoint of the study, rebuilt for scoring (eval mode)."""
    checkpoint = load_checkpoint(checkpoint_path, trusted=True)
    model = model_from_checkpoint(
        checkpoint, {"adaface": 0.5, "qaconv": 0.5}, ["pairs"], checkpoint_path, True
    )
    return model.eval()


@torch.no_grad()
def main(checkpoint_path: str) -> None:
    model = study_model(checkpoint_path)
    rows: dict[str, list[float]] = {}
    for occluded in (False, True):
        pairs, images, truth = study_val_pairs(occluded)
        features = embed_faces(model.backbone, images)
        maps = F.normalize(features.feature_maps, dim=1).flatten(2).transpose(1, 2)
        corr = torch.bmm(maps[0::2], maps[1::2].transpose(1, 2))
        variants = {"none": (None, None, 0.0)}
        for source, vis in (("predicted", features.visibility), ("true", truth)):
            for name, power in (("sum", 0.0), ("sqrt", 0.5), ("average", 1.0)):
                variants[f"{source} {name}"] = (vis[0::2], vis[1::2], power)
        for name, (vis_a, vis_b, power) in variants.items():
            scores = pair_scores(model.matcher, corr, vis_a, vis_b, power)
            rows.setdefault(name, []).append(
                verification_report(scores.numpy(), pairs.issame, num_folds=10)["acc"]
            )
    print("| score | clean | occluded |\n|---|---:|---:|")
    for name, (clean, occluded) in rows.items():
        print(f"| {name} | {clean:.3f} | {occluded:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
