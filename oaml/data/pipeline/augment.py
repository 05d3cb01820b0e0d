"""Training augmentations of the main stream: callables (image uint8 [3, H, W], visibility float32 [1, H, W])
-> (image, visibility).

* `OccluderAugment`: synthetic occluders (niqab, medical mask, sunglasses, ...) drawn on aligned faces; the
  occluder's exact mask multiplies the visibility, so the occlusion head and QAConv's visibility weighting
  learn from real identities as well as from the synthetic set.
* `AdaFaceAugment`: the augmentations of AdaFace (Kim et al., CVPR 2022, `dataset/augmenter.py` of
  mk-minchul/AdaFace): crop with zero padding, low resolution, photometric jitter, each with its own
  probability, then a horizontal flip with probability 0.5 (AdaFace's torchvision transform).
  Geometric operations (crop, flip) move the visibility map with the image: the zeroed border of a crop is
  hidden face. Photometric and resolution changes leave visibility alone.
* `AlignmentJitter`: a small random rotation, scale and shift of image and visibility together, so that a
  small training set does not learn the alignment template's exact pixel positions.

Randomness: each augmentation draws from its own numpy Generator (`WorkerSeededGenerator`); global numpy state
is never used. During training every item is fetched with a key that says where it sits in the run
(`oaml.data.pipeline.item_keys`), and the generator is seeded from that key, the rank, the augmentation's
`seed` and its name: an item's augmentation is the same in any worker and after a resume. Outside a keyed
fetch (a dataset used directly) it is seeded from `torch.initial_seed()` (distinct in every DataLoader worker)
instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from oaml.data.item_rng import WorkerSeededGenerator
from oaml.data.synthetic.occluders import RandomOccluder

__all__ = [
    "AdaFaceAugment",
    "AlignmentJitter",
    "Chain",
    "OccluderAugment",
    "check_pair",
]

Augmentation = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# PIL filters standing in for the OpenCV ones AdaFace draws from (nearest, linear, area, cubic, Lanczos).
_LOW_RES_FILTERS = (Image.NEAREST, Image.BILINEAR, Image.BOX, Image.BICUBIC, Image.LANCZOS)


def check_pair(image: torch.Tensor, visibility: torch.Tensor, who: str) -> None:
    """Raise unless image is uint8 [3, H, W] and visibility float32 [1, H, W] of the same size."""
    if not (
        isinstance(image, torch.Tensor)
        and image.dtype == torch.uint8
        and image.ndim == 3
        and image.shape[0] == 3
    ):
        raise ValueError(f"{who}: image must be a torch.uint8 tensor [3, H, W], got {_describe(image)}")
    if not (
        isinstance(visibility, torch.Tensor)
        and visibility.dtype == torch.float32
        and visibility.shape == (1, *image.shape[1:])
    ):
        raise ValueError(
            f"{who}: visibility must be a torch.float32 tensor [1, {image.shape[1]}, {image.shape[2]}], got "
            f"{_describe(visibility)}"
        )


def _check_probability(who: str, name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming the augmentation and its argument."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{who} {name} must be a probability in [0, 1], got {value}")
    return float(value)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__


class OccluderAugment:
    """Draw at most one synthetic occluder per image, type k with probability `probabilities[k]`.

    The visibility returned is the incoming visibility times the occluder's mask (0 on occluder pixels), so
    it composes with other occlusion sources. The image is taken as an aligned face in the 112x112 template
    (oaml.data.synthetic.occluders scales the template to other sizes). `match_grayscale`: occluders on grey
    faces are drawn in grey (see `apply_occluder`).
    """

    # The visibility it returns is exact: the training code may supervise the OcclusionHead with it.
    provides_visibility = True

    def __init__(
        self, probabilities: Mapping[str, float], seed: int = 0, match_grayscale: bool = False
    ) -> None:
        self.occluder = RandomOccluder(probabilities, match_grayscale)
        self._rng = WorkerSeededGenerator(seed, "OccluderAugment")

    def __call__(self, image: torch.Tensor, visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_pair(image, visibility, "OccluderAugment")
        occluded, mask, kind = self.occluder(image.permute(1, 2, 0).numpy(), self._rng())
        if kind is None:
            return image, visibility
        out = torch.from_numpy(np.ascontiguousarray(occluded.transpose(2, 0, 1)))
        return out, visibility * torch.from_numpy(mask)[None]

    def __repr__(self) -> str:
        return (
            f"OccluderAugment({self.occluder.probabilities}, seed={self._rng.seed}, "
            f"match_grayscale={self.occluder.match_grayscale})"
        )


def random_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random box: area fraction in `scale`, aspect (w/h) log-uniform in
    `ratio`; ten tries, then the largest centred box within the ratio range (torchvision's RandomResizedCrop
    parameters, which AdaFace's crop augmentation uses)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class AdaFaceAugment:
    """AdaFace's training augmentations on (image, visibility).

    In AdaFace's order: crop with zero padding (probability `crop_prob`: a random box of 20-100 % of the
    area, aspect 3/4-4/3, stays at its place and everything outside it becomes black; visibility becomes 0
    there too), low resolution (`low_res_prob`: shrink to a side ratio in [0.2, 1] and back, each resize with
    a random filter), photometric jitter (`photometric_prob`: brightness, contrast and saturation factors in
    [0.5, 1.5] applied in random order), then a horizontal flip with probability 0.5 when `flip`.
    """

    def __init__(
        self,
        crop_prob: float = 0.2,
        low_res_prob: float = 0.2,
        photometric_prob: float = 0.2,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        self.crop_prob = _check_probability("AdaFaceAugment", "crop_prob", crop_prob)
        self.low_res_prob = _check_probability("AdaFaceAugment", "low_res_prob", low_res_prob)
        self.photometric_prob = _check_probability("AdaFaceAugment", "photometric_prob", photometric_prob)
        self.flip = bool(flip)
        self._rng = WorkerSeededGenerator(seed, "AdaFaceAugment")

    def __call__(self, image: torch.Tensor, visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_pair(image, visibility, "AdaFaceAugment")
        rng = self._rng()
        if rng.random() < self.crop_prob:
            image, visibility = self.crop_with_zero_padding(image, visibility, rng)
        if rng.random() < self.low_res_prob:
            image = self.low_resolution(image, rng)
        if rng.random() < self.photometric_prob:
            image = self.photometric(image, rng)
        if self.flip and rng.random() < 0.5:
            image, visibility = image.flip(-1), visibility.flip(-1)
        return image, visibility

    @staticmethod
    def crop_with_zero_padding(
        image: torch.Tensor, visibility: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, h, w = random_crop_box(image.shape[1], image.shape[2], rng)
        keep = torch.zeros_like(visibility)
        keep[:, top : top + h, left : left + w] = 1.0
        return image * keep.to(torch.uint8), visibility * keep

    @staticmethod
    def low_resolution(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        height, width = image.shape[1:]
        small = max(1, int(rng.uniform(0.2, 1.0) * height))
        down = _LOW_RES_FILTERS[int(rng.integers(len(_LOW_RES_FILTERS)))]
        up = _LOW_RES_FILTERS[int(rng.integers(len(_LOW_RES_FILTERS)))]
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        picture = picture.resize((small, small), resample=down).resize((width, height), resample=up)
        return torch.from_numpy(np.asarray(picture).transpose(2, 0, 1).copy())

    @staticmethod
    def photometric(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        factors = rng.uniform(0.5, 1.5, size=3)
        adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        for op in rng.permutation(3):
            image = adjust[op](image, float(factors[op]))
        return image

    def __repr__(self) -> str:
        return (
            f"AdaFaceAugment(crop_prob={self.crop_prob}, low_res_prob={self.low_res_prob}, "
            f"photometric_prob={self.photometric_prob}, flip={self.flip}, seed={self._rng.seed})"
        )


class AlignmentJitter:
    """Undo a little of the face alignment: with probability `prob`, a random similarity warp of image and
    visibility together.

    Rotation uniform in +-`max_rotation` degrees, scale in 1 +- `max_scale`, shift in +-`max_shift` of the side
    (independently in x and y), about the image centre. Why: every training face is aligned by the same five
    landmarks, so a small set learns the template's exact pixel positions; test faces aligned by another
    detector land a few pixels off. The visibility is warped with the same parameters (nearest neighbour, so
    exact masks stay binary) and the border the warp brings in is black and hidden, as in AdaFace's crop.
    """

    def __init__(
        self,
        prob: float = 0.5,
        max_rotation: float = 10.0,
        max_scale: float = 0.1,
        max_shift: float = 0.06,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= float(max_scale) < 1.0:
            raise ValueError(
                f"AlignmentJitter max_scale must be in [0, 1) (scale 1 +- max_scale), got {max_scale}"
            )
        if not 0.0 <= float(max_shift) <= 0.5:
            raise ValueError(
                f"AlignmentJitter max_shift must be a fraction of the side in [0, 0.5], got {max_shift}"
            )
        if float(max_rotation) < 0.0:
            raise ValueError(f"AlignmentJitter max_rotation must be >= 0 degrees, got {max_rotation}")
        self.prob = _check_probability("AlignmentJitter", "prob", prob)
        self.max_rotation = float(max_rotation)
        self.max_scale = float(max_scale)
        self.max_shift = float(max_shift)
        self._rng = WorkerSeededGenerator(seed, "AlignmentJitter")

    def __call__(self, image: torch.Tensor, visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_pair(image, visibility, "AlignmentJitter")
        rng = self._rng()
        if rng.random() >= self.prob:
            return image, visibility
        height, width = image.shape[1:]
        angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
        scale = float(rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale))
        dx, dy = (float(v) for v in rng.uniform(-self.max_shift, self.max_shift, size=2))
        params = dict(
            angle=angle, translate=[round(dx * width), round(dy * height)], scale=scale, shear=[0.0]
        )
        image = TF.affine(image, **params, interpolation=TF.InterpolationMode.BILINEAR, fill=0)
        visibility = TF.affine(visibility, **params, interpolation=TF.InterpolationMode.NEAREST, fill=0.0)
        return image, visibility

    def __repr__(self) -> str:
        return (
            f"AlignmentJitter(prob={self.prob}, max_rotation={self.max_rotation}, max_scale={self.max_scale}, "
            f"max_shift={self.max_shift}, seed={self._rng.seed})"
        )


class Chain:
    """Apply (image, visibility) augmentations one after the other."""

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        self.augmentations = list(augmentations)

    def __call__(self, image: torch.Tensor, visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for augmentation in self.augmentations:
            image, visibility = augmentation(image, visibility)
        return image, visibility

    def __repr__(self) -> str:
        return f"Chain({self.augmentations})"
