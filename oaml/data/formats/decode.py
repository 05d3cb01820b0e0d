"""Image decoding and resampling helpers shared by the dataset readers.

Every reader of OAML decodes to RGB uint8 (the single RGB->BGR swap for AdaFace weights happens later, in the
normalisation transform) and reports an unreadable file by its name, so that one corrupt JPEG among millions
is found at once instead of surfacing as a PIL traceback without context.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from oaml.errors import DataError, MissingFileError
from oaml.losses.occlusion import downsample_visibility

__all__ = [
    "IMAGE_EXTENSIONS",
    "area_downsample",
    "decode_image_rgb",
    "load_image_rgb",
    "load_mask",
    "resize_rgb",
    "to_chw_tensor",
]

#: File extensions treated as images by the folder readers (lower case, with the dot).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def decode_image_rgb(data: bytes | bytearray | memoryview, source: str) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to an RGB uint8 array [H, W, 3].

    `source` names where the bytes came from (a file, or a file and record key); it is quoted in the error
    raised for data PIL cannot decode, including truncated JPEGs (PIL raises on them unless told otherwise).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot decode image from {source}: {error}") from error


def load_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read and decode one image file to RGB uint8 [H, W, 3]; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MissingFileError(f"cannot read image file {path}: {error}") from error
    return decode_image_rgb(data, str(path))


def load_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a grayscale visibility mask (255 visible, 0 hidden) as float32 [H, W] in [0, 1].

    Colour or alpha masks are converted to luminance ("L"), so a mask saved as RGB still reads as intended.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            gray = image.convert("L") if image.mode != "L" else image
            return np.asarray(gray, dtype=np.float32) / 255.0
    except FileNotFoundError as error:
        raise MissingFileError(f"mask file {path} does not exist") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"cannot decode mask file {path}: {error}") from error


def resize_rgb(image: np.ndarray, size: tuple[int, int], resample: int = Image.BILINEAR) -> np.ndarray:
    """Resize an RGB uint8 [H, W, 3] array to `size` = (height, width) with a PIL filter."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample=resample), dtype=np.uint8)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """Turn an RGB uint8 [H, W, 3] array into a contiguous torch.uint8 tensor [3, H, W]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def area_downsample(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Exact area-average resampling of a 2-D float mask to `size` = (height, width).

    Used to bring a pixel-resolution visibility mask to the backbone's feature-map grid (112x112 -> 7x7):
    each output value is the visible fraction of the image region that feature cell sees, so values stay in
    [0, 1] and the mean of the mask is preserved.
    """
    if mask.ndim != 2:
        raise ValueError(f"area_downsample expects a 2-D mask, got shape {tuple(mask.shape)}")
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"area_downsample size must be positive, got {size}")
    # One implementation of exact area averaging serves the data readers and the training targets.
    grid = downsample_visibility(
        torch.from_numpy(mask.astype(np.float64))[None, None], (int(height), int(width))
    )
    return grid[0, 0].numpy().astype(np.float32)
