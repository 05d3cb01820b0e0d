"""Study tool (insight only: it reads the evaluated pairs, so nothing it finds may be chosen from it): how far a
different fusion of the two branches could go on a checkpoint's val pairs (table 7).

Two families of fused scores, both on the impostor z-scores the model gathered in training
(``oaml.models.score_norm``):

- ``w``: ``w * z(adaface) + (1 - w) * z(qaconv)`` for fixed w (the default fused score is w = 0.5); the best w
  on the evaluated pairs is an upper bound for any fixed-weight fusion fitted elsewhere;
- ``p``: visibility-aware, ``0.5 * v**p * z(adaface) + 0.5 * z(qaconv)`` with ``v`` the smaller of the two
  faces' mean predicted visibility: the global embedding counts less when a face is partly hidden (p = 0 is
  the default fused score). A rule with no fitted parameter, declared before it was scored.

    python experiments/occlusion_awareness/fusion_scan.py --set real CKPT...        # lfw_dev, grey twin
    python experiments/occlusion_awareness/fusion_scan.py --set synthetic CKPT...   # the study's 600 + 600 pairs
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from test_time_masks import study_model, study_val_pairs  # this folder's script (on sys.path when run as one)

from oaml.data.pipeline.normalize import normalize_faces
from oaml.data.pipeline.val_sets import build_val_sets
from oaml.evaluation.metrics import verification_report
from oaml.evaluation.scoring import embed_faces, score_pairs, split_pairs

WEIGHTS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)
POWERS = (0, 1, 2, 4)


def real_pairs(root: str, cache_dir: str) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """lfw_dev's clean pairs and its occluded twin with grey occluders (experiment=real_faces_dev's protocol),
    built by the same function as the run's validation sets."""
    val_cfg = {"bin": f"{root}/test/lfw_dev.bin", "cache_dir": cache_dir, "occluder_match_grayscale": True}
    sets = build_val_sets(val_cfg, seed=0)
    issame = np.asarray(sets["lfw_dev"].issame)
    return {
        name: (normalize_faces(torch.stack([ds[i][0] for i in range(len(ds))])), issame)
        for name, ds in (("clean", sets["lfw_dev"]), ("occluded", sets["lfw_dev_occluded"]))
    }


def synthetic_pairs() -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    out = {}
    for name, occluded in (("clean", False), ("occluded", True)):
        pairs, images, _ = study_val_pairs(occluded)
        out[name] = (images, np.asarray(pairs.issame))
    return out


@torch.no_grad()
def scan(checkpoint: str, sets: dict[str, tuple[torch.Tensor, np.ndarray]]) -> None:
    model = study_model(checkpoint)
    for name, (images, issame) in sets.items():
        first, second = split_pairs(embed_faces(model.backbone, images))
        # the validation scorer's own scores (QAConv in the mode the model was trained with)
        scores = score_pairs(first, second, model.matcher, model.fusion, model.score_norm)
        cosine, qaconv = scores["adaface"], scores["qaconv"]
        pair_visible = torch.minimum(
            first.visibility.flatten(1).mean(1), second.visibility.flatten(1).mean(1)
        )
        z_ada = model.score_norm.normalize("adaface", cosine)
        z_qa = model.score_norm.normalize("qaconv", qaconv)

        def acc(scores: torch.Tensor, issame: np.ndarray = issame) -> float:
            return verification_report(scores.numpy(), issame, num_folds=10)["acc"]

        row = [acc(cosine), acc(qaconv)]
        row += [acc(w * z_ada + (1 - w) * z_qa) for w in WEIGHTS]
        row += [acc(0.5 * pair_visible**p * z_ada + 0.5 * z_qa) for p in POWERS]
        print(f"| {checkpoint} | {name} | " + " | ".join(f"{a:.3f}" for a in row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--set", choices=("real", "synthetic"), default="real")
    parser.add_argument("--root", default="../shared/realfaces", help="the real-face folder (--set real)")
    parser.add_argument("--cache-dir", default="outputs/val_cache")
    args = parser.parse_args()
    sets = real_pairs(args.root, args.cache_dir) if args.set == "real" else synthetic_pairs()
    header = ["adaface", "qaconv", *(f"w={w}" for w in WEIGHTS), *(f"p={p}" for p in POWERS)]
    print("| checkpoint | pairs | " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * len(header))
    for checkpoint in args.checkpoints:
        scan(checkpoint, sets)


if __name__ == "__main__":
    main()
