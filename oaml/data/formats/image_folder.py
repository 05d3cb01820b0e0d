"""Main-stream dataset over a folder of aligned faces with one sub-folder per identity.

Layouts: `root/<identity>/<image>` (torchvision's ImageFolder layout) and AdaFace's `root/imgs/<label>/<image>`
(pointing `root` at the folder that holds `imgs/` works as well as pointing it at `imgs/`). Classes are the
identity folders that hold at least one image, numbered in sorted (string) order of their names, the order
torchvision's ImageFolder and so AdaFace use; the class count comes from the folders found, never from the
dataset's name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.data.formats.bad_images import BadImages
from oaml.data.formats.decode import IMAGE_EXTENSIONS, load_image_rgb, resize_rgb, to_chw_tensor
from oaml.errors import DataError, MissingFileError

__all__ = ["ImageFolderDataset"]

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _image_files(folder: str, extensions: tuple[str, ...]) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(extensions))


def _identity_folders(root: Path) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


class ImageFolderDataset(Dataset):
    """One folder per identity; item (image uint8 [3, H, W] RGB, label int, visibility float32 [1, H, W] ones).

    `labels` (int64 per item) and `num_classes` are known after listing the folders, without decoding any
    image. `image_size` (height = width), when given, resizes every decoded image, for folders of aligned faces
    stored at another size than the model's input. `transform` maps (image, visibility) -> (image, visibility).
    Identity folders without images are skipped with one warning naming them. An unreadable image stops
    training with its name, or with `on_bad_image="skip"` is replaced by another image of the same identity
    (`oaml.data.formats.bad_images`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        image_size: int | None = None,
        on_bad_image: str = "error",
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MissingFileError(f"image folder root {root} does not exist or is not a folder")
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.root = self._identity_root(root)
        self.transform = transform
        self.image_size = image_size

        paths: list[bytes] = []
        labels: list[int] = []
        self.class_names: list[str] = []
        empty: list[str] = []
        for folder in _identity_folders(self.root):
            files = _image_files(os.path.join(self.root, folder), self.extensions)
            if not files:
                empty.append(folder)
                continue
            label = len(self.class_names)
            self.class_names.append(folder)
            paths.extend(os.fsencode(os.path.join(folder, name)) for name in files)
            labels.extend([label] * len(files))
        if not paths:
            raise DataError(
                f"no images with extensions {self.extensions} in identity sub-folders of {self.root}; expected "
                f"root/<identity>/<image> (or AdaFace's root/imgs/<label>/<image>)"
            )
        if empty:
            warnings.warn(
                f"{self.root}: skipped {len(empty)} identity folders without images: {empty[:10]}"
                + (" ..." if len(empty) > 10 else ""),
                stacklevel=2,
            )
        # Fixed-width bytes, not Python strings: no per-item objects whose reference counts would copy
        # the pages of a multi-million-image list into every forked DataLoader worker.
        self._relative_paths = np.asarray(paths, dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.class_names)
        self.bad_images = BadImages(on_bad_image, self.labels, self._describe)

    def _identity_root(self, root: Path) -> Path:
        """`root`, or `root/imgs` when `root` holds AdaFace's layout (an `imgs/` folder and no identities)."""
        adaface = root / "imgs"
        if adaface.is_dir() and _identity_folders(adaface):
            others = [
                name
                for name in _identity_folders(root)
                if name != "imgs" and _image_files(os.path.join(root, name), self.extensions)
            ]
            if not others:
                return adaface
        return root

    def _describe(self, index: int) -> str:
        return str(self.path(index))

    def path(self, index: int) -> Path:
        """File of item `index`."""
        return self.root / os.fsdecode(self._relative_paths[index])

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image = self.bad_images.load(index, lambda i: load_image_rgb(self.path(i)))
        if self.image_size is not None:
            image = resize_rgb(image, (self.image_size, self.image_size))
        tensor = to_chw_tensor(image)
        visibility = torch.ones((1, tensor.shape[1], tensor.shape[2]), dtype=torch.float32)
        if self.transform is not None:
            tensor, visibility = self.transform(tensor, visibility)
        return tensor, int(self.labels[index]), visibility
