"""Study tool: score an erasing checkpoint (``occlusion.erase=true``) on the synthetic val pairs with its body
reading each face erased by the head's map or by the *true* visibility (an oracle), by each face's own map or by
the pair's union (``val.erase=pair``), and with QAConv's ``covisible`` weighting at test time. Table 4's oracle
rows; a model trained without erasure is erased the same way (through ``IResNet.erase_hidden``).

    python experiments/occlusion_awareness/erasure_oracle.py outputs/oa/ET2_s42/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from test_time_masks import study_val_pairs  # this folder's script (on sys.path when run as one)

from oaml.evaluation.metrics import verification_report
from oaml.models import IResNet
from oaml.training.build import model_from_checkpoint
from oaml.training.checkpoint import load_checkpoint


def embed(backbone: IResNet, images: torch.Tensor, erase: torch.Tensor | None):
    """(flip-fused unit embeddings, unflipped feature maps) with the body reading ``images`` erased by ``erase``
    (None: the backbone's own behaviour)."""
    if not backbone.occlusion_erase and erase is not None:
        images, erase = IResNet.erase_hidden(images, erase), None
    extra = {} if erase is None else {"erase_visibility": erase}
    extra_f = {} if erase is None else {"erase_visibility": torch.flip(erase, dims=[3])}
    embedding, norm, _, maps = backbone(images, return_occlusion=True, **extra)
    embedding_f, norm_f = backbone(torch.flip(images, dims=[3]), **extra_f)
    return F.normalize(embedding * norm + embedding_f * norm_f, dim=1), maps


@torch.no_grad()
def main(checkpoint_path: str) -> None:
    checkpoint = load_checkpoint(checkpoint_path, trusted=True)
    model = model_from_checkpoint(
        checkpoint, {"adaface": 0.5, "qaconv": 0.5}, ["pairs"], checkpoint_path, True
    )
    model.eval()
    backbone, matcher = model.backbone, model.matcher
    print(f"{checkpoint_path} ({'erasing' if backbone.occlusion_erase else 'not erasing'})")
    print("| pairs | erased by | adaface | qaconv | qaconv covisible |\n|---|---|---:|---:|---:|")
    for occluded in (False, True):
        pairs, x, truth = study_val_pairs(occluded)
        maps = {"predicted": backbone.occlusion_head(x), "true": truth}
        variants = {"nothing": (None, None)} if not backbone.occlusion_erase else {}
        for source, vis in maps.items():
            first, second = vis[0::2], vis[1::2]
            union = torch.minimum(first, second)
            variants[f"own {source} map"] = (first, second)
            variants[f"pair's union, {source}"] = (union, union)
        for name, (erase_a, erase_b) in variants.items():
            embedding_a, maps_a = embed(backbone, x[0::2], erase_a)
            embedding_b, maps_b = embed(backbone, x[1::2], erase_b)
            weighting = matcher.weighting
            matcher.weighting = "covisible"
            vis_a = maps["predicted"][0::2] if erase_a is None else erase_a
            vis_b = maps["predicted"][1::2] if erase_b is None else erase_b
            covisible = matcher.pair_scores(maps_a, maps_b, vis_a, vis_b)
            matcher.weighting = weighting
            scores = ((embedding_a * embedding_b).sum(1), matcher.pair_scores(maps_a, maps_b), covisible)
            accs = [verification_report(s.numpy(), pairs.issame, num_folds=10)["acc"] for s in scores]
            print(
                f"| {'occluded' if occluded else 'clean'} | {name} | "
                + " | ".join(f"{a:.3f}" for a in accs)
                + " |"
            )


if __name__ == "__main__":
    for path in sys.argv[1:]:
        main(path)
