"""The InsightFace RecordIO training set (`train.rec` + `train.idx`, e.g. CASIA-WebFace, MS1MV2), no mxnet.

The format itself (framing, headers, index, writer) is in :mod:`oaml.data.formats.recordio_format`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from oaml.data.formats.bad_images import BadImages
from oaml.data.formats.decode import decode_image_rgb, resize_rgb, to_chw_tensor
from oaml.data.formats.recordio_format import (
    ImageRecordHeader,
    RecordIOFile,
    as_class_index,
    unpack_image_record,
)
from oaml.errors import DataError, MissingFileError


def _resolve_paths(root_or_rec_path: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    path = Path(root_or_rec_path)
    if path.is_dir():
        return path / f"{name}.rec", path / f"{name}.idx"
    if path.suffix == ".rec":
        return path, path.with_suffix(".idx")
    if not path.exists():
        raise MissingFileError(
            f"RecordIO path {path} does not exist (give a folder holding {name}.rec or a .rec)"
        )
    raise DataError(f"RecordIO path {path} is neither a folder nor a .rec file")


class RecordIODataset(Dataset):
    """Main-stream dataset over an InsightFace `train.rec`/`train.idx` pair.

    Item: (image uint8 [3, H, W] RGB, label int, visibility float32 [1, H, W] of ones); `transform`, when
    given, maps (image, visibility) to (image, visibility). `labels` (int64, one per item) and
    `num_classes` come from the data.

    Start-up cost: the `.idx` and record 0. With InsightFace's header record the labels come from the
    identity records (one small read per class: about 85k reads for MS1MV2, seconds); without it (shuffled
    recs) every image record's header is read: a seek and 32 to 40 bytes per image in file order, about 1.5 s
    per 100k images from the page cache, far longer from a cold network disk.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Any = None,
        name: str = "train",
        image_size: int | None = None,
        on_bad_image: str = "error",
    ) -> None:
        rec_path, idx_path = _resolve_paths(root, name)
        self.record_file = RecordIOFile(rec_path, idx_path)
        self.transform = transform
        # InsightFace recs hold 112x112 faces; a 224 backbone needs them resized (None: as stored).
        self.image_size = image_size
        self.image_keys, self.labels = self._index_images()
        if self.labels.size == 0:
            raise DataError(f"{rec_path} holds no image records")
        self.num_classes = int(self.labels.max()) + 1
        distinct = np.unique(self.labels).size
        lowest = int(self.labels.min())
        if lowest > 0:
            # Labels are class indices (the margin head's rows): a 1-based rec leaves class 0 without images.
            warnings.warn(
                f"{rec_path}: labels run from {lowest} to {self.num_classes - 1}, not from 0; classes 0..{lowest - 1} "
                f"have no images (the classifier still gets {self.num_classes} rows). Labels are read as class "
                "indices: rewrite the rec with labels 0..C-1 to avoid the unused rows",
                stacklevel=2,
            )
        elif distinct != self.num_classes:
            warnings.warn(
                f"{rec_path}: {distinct} distinct labels but the largest is {self.num_classes - 1}; the "
                f"classifier gets {self.num_classes} classes, {self.num_classes - distinct} of them unused",
                stacklevel=2,
            )
        self.bad_images = BadImages(on_bad_image, self.labels, self._describe)

    @property
    def rec_path(self) -> Path:
        return self.record_file.rec_path

    def _index_images(self) -> tuple[np.ndarray, np.ndarray]:
        records = self.record_file
        if 0 in records:
            header = records.read_header(0)
            if header.flag > 0:
                return self._index_from_identity_records(header)
        return self._index_from_image_headers()

    def _index_from_identity_records(self, header: ImageRecordHeader) -> tuple[np.ndarray, np.ndarray]:
        records = self.record_file
        if header.flag < 2:
            raise DataError(f"{records.rec_path}: header record 0 has flag {header.flag}, expected 2 labels")
        id_start, id_end = (int(v) for v in header.labels[:2])
        if not 1 <= id_start <= id_end:
            raise DataError(
                f"{records.rec_path}: header record 0 has bad identity range [{id_start}, {id_end})"
            )
        image_keys = np.arange(1, id_start, dtype=np.int64)
        if image_keys.size == 0 or id_end == id_start:
            raise DataError(f"{records.rec_path}: header record 0 announces no images or no identities")
        self._require_keys(image_keys, "image")
        self._require_keys(np.arange(id_start, id_end, dtype=np.int64), "identity")
        labels = np.full(image_keys.size, -1, dtype=np.int64)
        first_keys = np.zeros(id_end - id_start, dtype=np.int64)
        for class_index, key in enumerate(range(id_start, id_end)):
            identity = records.read_header(key)
            if identity.flag < 2:
                raise DataError(f"{records.rec_path}: identity record key {key} has no [first, last) range")
            first, last = (int(v) for v in identity.labels[:2])
            if not 1 <= first <= last <= id_start:
                raise DataError(
                    f"{records.rec_path}: identity record key {key} gives image range [{first}, {last}) outside "
                    f"the image keys 1..{id_start - 1}"
                )
            if (labels[first - 1 : last - 1] >= 0).any():
                raise DataError(
                    f"{records.rec_path}: identity record key {key} range [{first}, {last}) overlaps another identity"
                )
            labels[first - 1 : last - 1] = class_index
            first_keys[class_index] = first if last > first else 0
        unlabelled = np.flatnonzero(labels < 0)
        if unlabelled.size:
            raise DataError(
                f"{records.rec_path}: {unlabelled.size} image keys (first {int(image_keys[unlabelled[0]])}) belong "
                f"to no identity record"
            )
        # InsightFace readers take the label from each image's header; spot-check that it is the identity
        # record's position for the first image of 16 classes now, rather than fail on a batch hours later.
        for class_index in np.unique(np.linspace(0, first_keys.size - 1, 16).astype(np.int64)).tolist():
            key = int(first_keys[class_index])
            if key == 0:
                continue
            stored = records.read_header(key).first_label
            if stored != class_index:
                raise DataError(
                    f"{records.rec_path}: image key {key} has label {stored} in its header but belongs to "
                    f"identity record {class_index}; this rec's identity records do not follow its labels"
                )
        self._labels_from_identities = True
        return image_keys, labels

    def _index_from_image_headers(self) -> tuple[np.ndarray, np.ndarray]:
        records = self.record_file
        offsets = records.offsets(records.keys)
        order = np.argsort(offsets, kind="stable")
        image_keys = records.keys[order]
        labels = np.empty(image_keys.size, dtype=np.int64)
        for position, (key, offset) in enumerate(zip(image_keys.tolist(), offsets[order].tolist())):
            header = records.header_at(key, offset)
            labels[position] = as_class_index(header.first_label, f"{records.rec_path} key {key}")
        self._labels_from_identities = False
        return image_keys, labels

    def _require_keys(self, keys: np.ndarray, kind: str) -> None:
        records = self.record_file
        missing = records.missing_keys(keys)
        if missing.size:
            raise DataError(
                f"{records.idx_path}: {missing.size} {kind} keys announced by header record 0 of "
                f"{records.rec_path} are not in the index (first: {missing[:5].tolist()})"
            )

    def __len__(self) -> int:
        return int(self.image_keys.size)

    def _describe(self, index: int) -> str:
        return f"{self.rec_path} key {int(self.image_keys[index])}"

    def _read_image(self, index: int) -> np.ndarray:
        key = int(self.image_keys[index])
        source = f"{self.rec_path} key {key}"
        header, encoded = unpack_image_record(self.record_file.read(key), source)
        label = int(self.labels[index])
        stored = header.first_label
        if stored != label:
            raise DataError(
                f"{source}: the image header says label {stored} but the "
                f"{'identity records say' if self._labels_from_identities else 'label index says'} {label}"
            )
        return decode_image_rgb(encoded, source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image = self.bad_images.load(index, self._read_image)
        if self.image_size is not None and image.shape[:2] != (self.image_size, self.image_size):
            image = resize_rgb(image, (self.image_size, self.image_size))
        image = to_chw_tensor(image)
        visibility = torch.ones((1, image.shape[1], image.shape[2]), dtype=torch.float32)
        if self.transform is not None:
            image, visibility = self.transform(image, visibility)
        return image, int(self.labels[index]), visibility
