"""Pure-torch models: IResNet backbones, occlusion head, margin heads, QAConv, AdaFace checkpoint import.

Nothing here imports Lightning, Hydra or the rest of OAML: every module is usable and exportable alone.
"""

from __future__ import annotations

from oaml.models.adaface_checkpoint import AdaFaceLoadReport, load_adaface_checkpoint, load_adaface_state
from oaml.models.iresnet import BACKBONE_NAMES, IResNet, build_backbone
from oaml.models.margin_heads import AdaFace, ArcFace, CosFace
from oaml.models.occlusion_head import OcclusionHead
from oaml.models.qaconv import WEIGHTINGS, QAConv

__all__ = [
    "BACKBONE_NAMES",
    "WEIGHTINGS",
    "AdaFace",
    "AdaFaceLoadReport",
    "ArcFace",
    "CosFace",
    "IResNet",
    "OcclusionHead",
    "QAConv",
    "build_backbone",
    "load_adaface_checkpoint",
    "load_adaface_state",
]
