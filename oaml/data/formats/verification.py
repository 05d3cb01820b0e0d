"""Verification pair sets: InsightFace `.bin` files and plain pair lists.

A verification dataset lists images so that items 2i and 2i+1 form pair i, with `issame[i]` telling whether
both show the same person; the scorer embeds every item and compares the two members of each pair (the
protocol of LFW and of InsightFace's `.bin` sets). Items are (image uint8 [3, H, W] RGB, visibility float32
[1, H, W]); the sets read here carry no occlusion annotation, so visibility is all ones.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.data.formats.decode import decode_image_rgb, load_image_rgb, resize_rgb, to_chw_tensor
from oaml.errors import ConfigError, DataError, MissingFileError

__all__ = ["STANDARD_VAL_SETS", "BinVerificationDataset", "PairListDataset", "load_bin", "standard_val_sets"]

#: The five verification sets InsightFace ships next to its training recs.
STANDARD_VAL_SETS: tuple[str, ...] = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")

_CACHE_VERSION = 1


def _as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return int(size[0]), int(size[1])


class _BinUnpickler(pickle.Unpickler):
    """Unpickles only what a `.bin` holds (lists, bytes, bools, numpy arrays), never arbitrary callables:
    a `.bin` downloaded from a mirror must not be able to run code on load."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytearray"),
        ("__builtin__", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a verification .bin holds no such object"
        )


def load_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """Encoded images and the per-pair `issame` flags of an InsightFace `.bin`.

    The files were pickled under Python 2, hence `encoding="bytes"`. Checks that there are two images per flag.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"verification set {path} does not exist")
    try:
        with open(path, "rb") as handle:
            content = _BinUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise DataError(
            f"{path} is not an InsightFace verification .bin (pickle of images, issame): {error}"
        ) from error
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise DataError(f"{path}: expected a pickled (images, issame) pair, got {type(content).__name__}")
    images, issame = content
    issame = np.asarray(list(issame), dtype=bool)
    if len(images) != 2 * issame.size:
        raise DataError(f"{path}: {len(images)} images for {issame.size} pairs; expected two images per pair")
    encoded = [item.tobytes() if isinstance(item, np.ndarray) else bytes(item) for item in images]
    return encoded, issame


class BinVerificationDataset(Dataset):
    """An InsightFace verification `.bin` (lfw, cfp_fp, agedb_30, calfw, cplfw, or any other).

    The JPEGs are decoded once into a uint8 memory map [N, 3, H, W] (next to the `.bin`, or in `cache_dir`)
    with a JSON sidecar holding the `.bin`'s size and mtime and the pair flags; a later run whose `.bin` is
    unchanged opens the map at once, a changed `.bin` is decoded again. Both files are written under
    temporary names and renamed, so an interrupted run never leaves a cache that looks valid. Images whose
    size differs from `image_size` are resized (bilinear), with one warning giving their count.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: int | tuple[int, int] = 112,
        cache_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"verification set {self.path} does not exist")
        self.image_size = _as_size(image_size)
        self.name = name or self.path.stem
        height, width = self.image_size
        folder = Path(cache_dir) if cache_dir is not None else self.path.parent
        stem = f"{self.path.stem}.{height}x{width}"
        self.cache_path = folder / f"{stem}.uint8"
        self.sidecar_path = folder / f"{stem}.json"
        self.issame = self._load_cache() if self._cache_is_valid() else self._build_cache(folder)
        self._images: np.memmap | None = None
        self._pid: int | None = None

    def _source_stamp(self) -> dict[str, Any]:
        stat = self.path.stat()
        return {
            "version": _CACHE_VERSION,
            "source": str(self.path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "image_size": list(self.image_size),
        }

    def _cache_is_valid(self) -> bool:
        if not (self.sidecar_path.is_file() and self.cache_path.is_file()):
            return False
        try:
            sidecar = json.loads(self.sidecar_path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(sidecar, dict) or sidecar.get("stamp") != self._source_stamp():
            return False
        count = len(sidecar.get("issame", [])) * 2
        return self.cache_path.stat().st_size == count * 3 * self.image_size[0] * self.image_size[1]

    def _load_cache(self) -> np.ndarray:
        return np.asarray(json.loads(self.sidecar_path.read_text())["issame"], dtype=bool)

    def _build_cache(self, folder: Path) -> np.ndarray:
        encoded, issame = load_bin(self.path)
        height, width = self.image_size
        try:
            folder.mkdir(parents=True, exist_ok=True)
            suffix = f".tmp-{os.getpid()}"
            tmp_data = self.cache_path.with_name(self.cache_path.name + suffix)
            tmp_sidecar = self.sidecar_path.with_name(self.sidecar_path.name + suffix)
            array = np.memmap(tmp_data, dtype=np.uint8, mode="w+", shape=(len(encoded), 3, height, width))
        except OSError as error:
            raise OSError(
                f"cannot write the decoded cache of {self.path} in {folder}: {error}; pass cache_dir= a writable "
                f"folder"
            ) from error
        resized = 0
        try:
            for index, data in enumerate(encoded):
                image = decode_image_rgb(data, f"{self.path} image {index}")
                if image.shape[:2] != (height, width):
                    resized += 1
                    image = resize_rgb(image, (height, width))
                array[index] = image.transpose(2, 0, 1)
            array.flush()
            del array
            sidecar = {"stamp": self._source_stamp(), "issame": issame.astype(int).tolist()}
            tmp_sidecar.write_text(json.dumps(sidecar))
            os.replace(tmp_data, self.cache_path)
            os.replace(tmp_sidecar, self.sidecar_path)
        finally:
            for leftover in (tmp_data, tmp_sidecar):
                leftover.unlink(missing_ok=True)
        if resized:
            warnings.warn(
                f"{self.path}: resized {resized} of {len(encoded)} images to {height}x{width}", stacklevel=3
            )
        return issame

    def _array(self) -> np.memmap:
        """The memory map, opened once per process (a memmap pickled to a worker would be copied whole)."""
        if self._images is None or self._pid != os.getpid():
            height, width = self.image_size
            self._images = np.memmap(
                self.cache_path, dtype=np.uint8, mode="r", shape=(len(self), 3, height, width)
            )
            self._pid = os.getpid()
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return 2 * int(self.issame.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self._array()[index]))
        return image, torch.ones((1, image.shape[1], image.shape[2]), dtype=torch.float32)


class PairListDataset(Dataset):
    """Pairs listed in a text file, for users' own verification data.

    One pair per line: ``path_a path_b 0|1`` (1 = same person), paths relative to the list's folder unless
    absolute; blank lines and lines starting with ``#`` are ignored. Every listed file must exist at
    construction. Images are decoded on access and resized to `image_size` when they differ (one warning).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: int | tuple[int, int] = 112,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"pair list {self.path} does not exist")
        self.image_size = _as_size(image_size)
        self.name = name or self.path.stem
        files: list[str] = []
        flags: list[bool] = []
        base = self.path.parent
        for line_number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.split()
            if len(fields) != 3 or fields[2] not in ("0", "1"):
                raise DataError(
                    f"{self.path}:{line_number}: expected 'path_a path_b 0|1' (paths without spaces), got {text!r}"
                )
            for field in fields[:2]:
                file = base / field
                if not file.is_file():
                    raise MissingFileError(f"{self.path}:{line_number}: image {file} does not exist")
                files.append(str(file))
            flags.append(fields[2] == "1")
        if not flags:
            raise DataError(f"pair list {self.path} lists no pairs")
        self.files = files
        self.issame = np.asarray(flags, dtype=bool)
        self._warned_resize = False

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image_rgb(self.files[index])
        if image.shape[:2] != self.image_size:
            if not self._warned_resize:
                warnings.warn(
                    f"{self.path}: images not of size {self.image_size[0]}x{self.image_size[1]} are resized "
                    f"(first: {self.files[index]})",
                    stacklevel=2,
                )
                self._warned_resize = True
            image = resize_rgb(image, self.image_size)
        tensor = to_chw_tensor(image)
        return tensor, torch.ones((1, tensor.shape[1], tensor.shape[2]), dtype=torch.float32)


def standard_val_sets(
    root: str | os.PathLike[str], names: tuple[str, ...] = STANDARD_VAL_SETS
) -> dict[str, Path]:
    """`{name: root/name.bin}` for the standard verification sets; an error lists every missing one."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"verification folder {root} does not exist")
    found = {name: root / f"{name}.bin" for name in names if (root / f"{name}.bin").is_file()}
    missing = [name for name in names if name not in found]
    if missing:
        present = sorted(p.name for p in root.glob("*.bin"))
        raise MissingFileError(
            f"{root} lacks the verification sets {missing} (expected {', '.join(f'{n}.bin' for n in missing)}); "
            f".bin files present: {present or 'none'}"
        )
    return found
