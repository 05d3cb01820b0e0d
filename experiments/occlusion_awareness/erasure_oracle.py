"""Study tool: score an erasing checkpoint (``occlusion.erase=true``) on the synthetic val pairs with its body
reading each face erased by the head's map or by the *true* visibility (an oracle), by each face's own map or by
the pair's union (``val.erase=pair``), and with QAConv's ``covisible`` weighting at test time. Table 4's oracle
rows; a model trained without erasure is erased the same way (through ``IResNet.erase_hidden``).

    python experiments/occlusion_awareness/erasure_oracle.py outputs/oa/ET2_s42/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys

import torch
from test_time_masks import study_model, study_val_pairs  # this folder's script (on sys.path when run as one)

from oaml.evaluation.metrics import verification_report
from oaml.evaluation.scoring import FaceFeatures, embed_faces
from oaml.models import IResNet


def embed(backbone: IResNet, images: torch.Tensor, erase: torch.Tensor | None) -> FaceFeatures:
    """The scorer's features with the body reading ``images`` erased by ``erase`` (None: the backbone's own
    behaviour); a backbone trained without erasure reads the erased images."""
    if erase is not None and not backbone.occlusion_erase:
        return embed_faces(backbone, IResNet.erase_hidden(images, erase))
    return embed_faces(backbone, images, erase_visibility=erase)


@torch.no_grad()
def main(checkpoint_path: str) -> None:
    model = study_model(checkpoint_path)
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
            face_a, face_b = embed(backbone, x[0::2], erase_a), embed(backbone, x[1::2], erase_b)
            # covisible weighting by the cells erased (by the head's own map where nothing was)
            vis_a = face_a.visibility if erase_a is None else erase_a
            vis_b = face_b.visibility if erase_b is None else erase_b
            weighting = matcher.weighting
            matcher.weighting = "covisible"
            covisible = matcher.pair_scores(face_a.feature_maps, face_b.feature_maps, vis_a, vis_b)
            matcher.weighting = weighting
            cosine = (face_a.embedding * face_b.embedding).sum(1)
            scores = (cosine, matcher.pair_scores(face_a.feature_maps, face_b.feature_maps), covisible)
            accs = [verification_report(s.numpy(), pairs.issame, num_folds=10)["acc"] for s in scores]
            print(
                f"| {'occluded' if occluded else 'clean'} | {name} | "
                + " | ".join(f"{a:.3f}" for a in accs)
                + " |"
            )


if __name__ == "__main__":
    for path in sys.argv[1:]:
        main(path)
