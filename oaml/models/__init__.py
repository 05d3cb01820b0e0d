"""Pure-torch models: IResNet backbones, occlusion head, margin heads, AdaFace checkpoint import."""

from __future__ import annotations

from oaml.models.iresnet import BACKBONE_NAMES, IResNet, build_backbone
from oaml.models.margin_heads import AdaFace, ArcFace, CosFace
from oaml.models.occlusion_head import OcclusionHead

__all__ = [
    "BACKBONE_NAMES",
    "AdaFace",
    "ArcFace",
    "CosFace",
    "IResNet",
    "OcclusionHead",
    "build_backbone",
]
