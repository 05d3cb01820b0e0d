"""Improved-residual networks (IResNet / IR-SE) for face recognition, AdaFace-compatible.

The architecture is the "IR" ResNet of ArcFace (Deng et al., CVPR 2019, section 3.2 / figure 7) as released
with AdaFace (Kim et al., CVPR 2022, github.com/mk-minchul/AdaFace ``net.py``): BN-conv-BN-PReLU-conv-BN
residual units whose *second* conv carries the stride, a 3x3 stride-1 stem, and an output layer
BN2d -> Dropout -> Flatten -> Linear -> BN1d that keeps the spatial layout of the last feature map.

Module names and indices follow AdaFace's exactly, so a released AdaFace checkpoint loads after stripping
its ``model.`` key prefix (see :mod:`oaml.models.adaface_checkpoint`):

- ``input_layer.{0,1,2}``: conv3x3(3 -> stem, no bias), BN2d, PReLU
- ``body.N``: one flat Sequential of units; the first unit of every stage (stage 1 included) has stride 2
- ``body.N.res_layer.{0..5}``: BN2d, conv3x3, BN2d, PReLU, conv3x3(stride), BN2d; IR-SE appends
  ``res_layer.se_block.{fc1,fc2}`` (1x1 convs without bias, channel reduction 16)
- ``body.N.shortcut_layer``: MaxPool2d(1, stride) when the channel count stays (no parameters), else
  ``shortcut_layer.{0,1}`` = conv1x1(stride, no bias), BN2d
- ``output_layer.{0,3,4}``: BN2d, (Dropout, Flatten,) Linear(C*h*w -> embedding), BatchNorm1d(affine=False)

OAML adds one attribute, ``occlusion_head`` (:class:`~oaml.models.occlusion_head.OcclusionHead`), which an
AdaFace checkpoint does not have. Its output lies on the body's final grid (7x7 at 112x112 input, 14x14 at
224x224); ``occlusion_input_stage`` says what it reads: the final feature map (the class default, the spec's),
an earlier, finer stage (area-averaged to the final grid), or the image through a stem of the head's own (the
config default: a backbone trained for identity learns to ignore occluders, experiments/occlusion_awareness).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from oaml.models.occlusion_head import OcclusionHead

SUPPORTED_INPUT_SIZES = (112, 224)
SE_REDUCTION = 16


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018) with 1x1 convs, named as AdaFace's ``SEModule``."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IRUnit(nn.Module):
    """One improved-residual unit: ``res_layer(x) + shortcut_layer(x)``; the stride sits on the second conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se: bool = False) -> None:
        super().__init__()
        if in_channels == out_channels:
            # A 1x1 max-pool is AdaFace's parameter-free strided identity.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if se:
            # Appended by name, as AdaFace does: the key is ``res_layer.se_block.*``, not ``res_layer.6.*``.
            self.res_layer.add_module("se_block", SEBlock(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """IResNet backbone with AdaFace's module layout plus an occlusion head on the last feature map.

    Args:
        units: residual units per stage, e.g. (3, 4, 14, 3) for IR-50. The first unit of each stage has
            stride 2, so the feature map is input_size / (stem_stride * 2**len(units)).
        channels: output channels per stage, same length as ``units``.
        stem_channels: channels of the 3x3 stem (``input_layer``); None means 64 as in AdaFace.
        se: use IR-SE units (squeeze-and-excitation inside every residual branch).
        input_size: 112 or 224 (square faces); fixes the Linear layer of ``output_layer``.
        embedding_size: size of the identity embedding.
        dropout: dropout before the embedding Linear (AdaFace: 0.4).
        occlusion_hidden_channels: hidden width of the occlusion head.
        occlusion_input_stage: which map the occlusion head reads: 0 the stem (``input_layer``), k the output of
            stage k (1-based), negative counts from the end; -1 (default) is the final feature map; ``"image"``
            the input image itself, through a strided stem of the head's own (see ``OcclusionHead``).
        occlusion_layers: extra conv3x3-BN-ReLU layers in the occlusion head (0: the spec's head).
        occlusion_erase: the body reads the image with its hidden cells erased (see :meth:`erase_hidden`): the
            occluder never reaches the identity features, whose receptive fields on the final grid span most
            of the face. Needs ``occlusion_input_stage="image"`` (the map must exist before the body runs).
        occlusion_detach_features: the occlusion head reads ``features.detach()``, so the occlusion loss trains
            only the head and never reshapes the backbone (gradient isolation). False lets it co-train the body.
        stem_stride: stride of the stem conv. 1 in every AdaFace model; 2 halves the resolution before the
            body, which makes the CPU-sized ``ir_nano`` fast (an IResNet spends most of its CPU time in the
            first unit's stride-1 conv at full input resolution). Not compatible with AdaFace checkpoints.
    """

    def __init__(
        self,
        units: Sequence[int],
        channels: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int | None = None,
        se: bool = False,
        input_size: int = 112,
        embedding_size: int = 512,
        dropout: float = 0.4,
        occlusion_hidden_channels: int = 128,
        occlusion_detach_features: bool = True,
        stem_stride: int = 1,
        occlusion_input_stage: int | str = -1,
        occlusion_layers: int = 0,
        occlusion_erase: bool = False,
    ) -> None:
        super().__init__()
        units = tuple(int(u) for u in units)
        channels = tuple(int(c) for c in channels)
        if input_size not in SUPPORTED_INPUT_SIZES:
            raise ValueError(
                f"IResNet input_size must be one of {SUPPORTED_INPUT_SIZES} (square aligned faces), "
                f"got {input_size}"
            )
        if not units or len(units) != len(channels):
            raise ValueError(
                f"IResNet needs one channel count per stage: units={units} and channels={channels} "
                "must be non-empty and of equal length"
            )
        if min(units) < 1 or min(channels) < 1:
            raise ValueError(
                f"IResNet units and channels must be positive, got units={units}, channels={channels}"
            )
        if stem_stride not in (1, 2):
            raise ValueError(
                f"IResNet stem_stride must be 1 (AdaFace) or 2 (CPU-sized variants), got {stem_stride}"
            )
        downsample = stem_stride * 2 ** len(units)
        if input_size % downsample:
            raise ValueError(
                f"IResNet with stem_stride={stem_stride} and {len(units)} stride-2 stages needs input_size "
                f"divisible by {downsample}, "
                f"got {input_size}"
            )
        if se and min(channels) < SE_REDUCTION:
            raise ValueError(
                f"IR-SE needs every stage to have >= {SE_REDUCTION} channels (SE reduction), got {channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"IResNet dropout must be in [0, 1), got {dropout}")
        num_taps = len(units) + 1  # the stem and every stage
        if occlusion_input_stage != "image" and not (
            isinstance(occlusion_input_stage, int) and -num_taps <= occlusion_input_stage < num_taps
        ):
            raise ValueError(
                f"occlusion_input_stage (occlusion.input_stage) must be 'image' or an int in [{-num_taps}, "
                f"{num_taps - 1}] for {len(units)} stages (0: stem, k: stage k, -1: final map), "
                f"got {occlusion_input_stage!r}"
            )

        if occlusion_erase and occlusion_input_stage != "image":
            raise ValueError(
                "occlusion_erase (occlusion.erase=true) needs the head to read the image "
                f"(occlusion.input_stage=image), got occlusion.input_stage={occlusion_input_stage!r}"
            )

        stem_channels = 64 if stem_channels is None else int(stem_channels)
        self.occlusion_erase = bool(occlusion_erase)
        self.units = units
        self.channels = channels
        self.se = se
        self.input_size = input_size
        self.embedding_size = int(embedding_size)
        self.feature_channels = channels[-1]
        side = input_size // downsample
        self.feature_size: tuple[int, int] = (side, side)
        self.occlusion_detach_features = occlusion_detach_features
        self.occlusion_input_stage = (
            occlusion_input_stage if occlusion_input_stage == "image" else occlusion_input_stage % num_taps
        )

        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem_channels, kernel_size=3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.PReLU(stem_channels),
        )
        body: list[nn.Module] = []
        in_channels = stem_channels
        for num_units, out_channels in zip(units, channels):
            for index in range(num_units):
                body.append(IRUnit(in_channels, out_channels, stride=2 if index == 0 else 1, se=se))
                in_channels = out_channels
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(self.feature_channels),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(self.feature_channels * side * side, self.embedding_size),
            nn.BatchNorm1d(self.embedding_size, affine=False),
        )
        if self.occlusion_input_stage == "image":
            # The head's own stem reads the normalised image: stride-2 steps down to the feature grid.
            self._occlusion_tap = None
            self.occlusion_head = OcclusionHead(
                3,
                occlusion_hidden_channels,
                num_layers=occlusion_layers,
                output_size=self.feature_size,
                downsample_steps=downsample.bit_length() - 1,
            )
        else:
            # Index into body after which the occlusion head's input is taken (-1: the stem's output).
            self._occlusion_tap = sum(units[: self.occlusion_input_stage]) - 1
            self.occlusion_head = OcclusionHead(
                ((stem_channels,) + channels)[self.occlusion_input_stage],
                occlusion_hidden_channels,
                num_layers=occlusion_layers,
                output_size=self.feature_size,
            )
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming normal (fan_out) for conv and linear weights, zero biases, unit BN: AdaFace's init.

        ``occlusion_head`` is skipped: it initialises itself (:meth:`OcclusionHead.reset_parameters`), since
        the fan_out init of its 1-channel output conv would saturate the initial visibility sigmoid.
        """
        head_modules = set(map(id, self.occlusion_head.modules()))
        for module in self.modules():
            if id(module) in head_modules:
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _check_input(self, x: Tensor) -> None:
        expected = (3, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"IResNet built for input_size={self.input_size} expects images [B, 3, {self.input_size}, "
                f"{self.input_size}], got {tuple(x.shape)}"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> body feature maps [B, C, h, w] (before ``output_layer``)."""
        return self._features_and_occlusion_input(x)[0]

    def _features_and_occlusion_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(final feature maps, the map the occlusion head reads): one pass through the body."""
        if not torch.jit.is_tracing():
            self._check_input(x)
        image = x
        x = self.input_layer(x)
        tap = image if self._occlusion_tap is None else x
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index == self._occlusion_tap:
                tap = x
        return x, tap

    def embed(self, feature_maps: Tensor) -> tuple[Tensor, Tensor]:
        """Feature maps -> (L2-normalised embedding [B, E], embedding norm [B, 1]), as AdaFace returns them."""
        raw = self.output_layer(feature_maps)
        norm = torch.linalg.vector_norm(raw, ord=2, dim=1, keepdim=True)
        return raw / norm, norm

    def occlusion(self, occlusion_input: Tensor) -> Tensor:
        """The occlusion head's input map (see ``occlusion_input_stage``) -> visibility [B, 1, h, w] in [0, 1]
        on the final feature grid; detached input unless configured otherwise."""
        if self.occlusion_detach_features:
            occlusion_input = occlusion_input.detach()
        return self.occlusion_head(occlusion_input)

    def forward(
        self, x: Tensor, return_occlusion: bool = False, erase_visibility: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images -> (embedding, norm), or (embedding, norm, occlusion_map, feature_maps) when asked.

        With ``occlusion_erase`` the body reads :meth:`erase_hidden` of the image, by the head's own map or by
        ``erase_visibility`` ([B, 1, h, w] on the feature grid, e.g. the training targets) when given; the
        returned occlusion map is always the head's prediction on the unerased image.
        """
        if not self.occlusion_erase:
            if erase_visibility is not None:
                raise ValueError(
                    "erase_visibility is given but this IResNet was built with occlusion_erase=False"
                )
            feature_maps, occlusion_input = self._features_and_occlusion_input(x)
            embedding, norm = self.embed(feature_maps)
            if not return_occlusion:
                return embedding, norm
            return embedding, norm, self.occlusion(occlusion_input), feature_maps
        if not torch.jit.is_tracing():
            self._check_input(x)
        visibility = self.occlusion(x)
        keep = visibility.detach() if erase_visibility is None else erase_visibility
        feature_maps, _ = self._features_and_occlusion_input(self.erase_hidden(x, keep))
        embedding, norm = self.embed(feature_maps)
        if not return_occlusion:
            return embedding, norm
        return embedding, norm, visibility, feature_maps

    @staticmethod
    def erase_hidden(images: Tensor, visibility: Tensor) -> Tensor:
        """Normalised images with every cell of ``visibility`` below 0.5 set to 0 (the mean grey): the grid
        cell's whole pixel block, so that train and test erase alike whatever the source of the map."""
        keep = (visibility >= 0.5).to(images.dtype)
        return images * F.interpolate(keep, size=tuple(images.shape[-2:]), mode="nearest")

    def num_backbone_parameters(self) -> int:
        """Parameters of the AdaFace-compatible backbone, i.e. everything except ``occlusion_head``."""
        head = {id(p) for p in self.occlusion_head.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in head)


# name -> architecture (units per stage, channels per stage, stem channels, SE units)
_ARCHITECTURES: dict[str, dict] = {
    "ir18": {"units": (2, 2, 2, 2)},
    "ir34": {"units": (3, 4, 6, 3)},
    "ir50": {"units": (3, 4, 14, 3)},
    "ir100": {"units": (3, 13, 30, 3)},
    "ir_se50": {"units": (3, 4, 14, 3), "se": True},
    # A CPU-sized IResNet for smoke runs and the default 5-minute CPU training: the same units and output
    # layer, a 16-channel stride-2 stem (full-resolution convs dominate an IResNet's CPU time), then three
    # stride-2 stages of 1, 2, 1 units (16, 64, 128 channels): 112 -> 56 -> 28 -> 14 -> 7, a 7x7x128 map.
    # Forward+backward of 64 faces at 112x112 took about 0.27 s on 2 CPU threads (torch 2.14).
    "ir_nano": {"units": (1, 2, 1), "channels": (16, 64, 128), "stem_channels": 16, "stem_stride": 2},
}
# AdaFace's own spellings (net.py ``build_model``); ``ir_101`` is AdaFace's name for IR-100.
_ALIASES = {"ir_18": "ir18", "ir_34": "ir34", "ir_50": "ir50", "ir_101": "ir100", "ir_se_50": "ir_se50"}
BACKBONE_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES) + tuple(_ALIASES)
_ARCHITECTURE_KEYS = ("units", "channels", "stem_channels", "stem_stride", "se")


def build_backbone(name: str, input_size: int = 112, **kwargs) -> IResNet:
    """Build a named IResNet (``ir18``, ``ir34``, ``ir50``, ``ir100``, ``ir_se50``, ``ir_nano`` or an AdaFace alias).

    ``kwargs`` are the remaining :class:`IResNet` arguments (embedding_size, dropout, occlusion_*). The
    architecture itself is fixed by the name; build :class:`IResNet` directly for a custom one.
    """
    key = _ALIASES.get(name, name)
    if key not in _ARCHITECTURES:
        raise ValueError(f"Unknown backbone name {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    fixed = sorted(set(kwargs) & set(_ARCHITECTURE_KEYS))
    if fixed:
        raise ValueError(
            f"build_backbone({name!r}) fixes {fixed} by its name; to change them use "
            "oaml.models.IResNet(units=..., channels=..., stem_channels=..., stem_stride=..., se=...) directly"
        )
    return IResNet(input_size=input_size, **_ARCHITECTURES[key], **kwargs)
