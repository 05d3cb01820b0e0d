"""InsightFace / MXNet RecordIO (`train.rec` + `train.idx`) in pure Python: the file format, reader and writer.

The training dataset over these files is :class:`oaml.data.formats.recordio.RecordIODataset`.

InsightFace ships its training sets (CASIA-WebFace as `faces_webface_112x112/`, MS1MV2 as `faces_emore/`) as
MXNet RecordIO files. No pure-Python reader exists on PyPI (mx-recordio needs libmxnet), so this module
implements the format from its definition in dmlc-core (`recordio.h`) and MXNet (`python/mxnet/recordio.py`):

* `.idx`: text lines ``key<TAB>byte_offset``, one per record.
* `.rec`: each record is framed as uint32 magic 0xCED7230A, uint32 `lrec` (low 29 bits: part length, top 3
  bits: continuation flag), the part's bytes, zero padding to a multiple of 4. The writer scans the payload at
  4-byte aligned positions for the magic word; at each hit it ends the current part (flag 1 for the first
  part, 2 for a middle part) and drops the magic word, and the last part gets flag 3. A reader rejoins the
  parts with the magic bytes between them. A record without a hit is one part with flag 0.
* payload (MXNet `IRHeader`): little-endian uint32 flag, float32 label, uint64 id, uint64 id2 (24 bytes); when
  flag > 0, `flag` float32 labels follow and the scalar label is unused; then the encoded image.
* InsightFace face sets: record 0 has flag 2 and labels [id_start, id_end]; image records are keys
  1 .. id_start-1; keys id_start .. id_end-1 hold one record per identity whose labels are the [first, last)
  image keys of that identity. Shuffled sets have no such header: every key is an image with its own label.

All multi-byte fields are little-endian, as MXNet writes them on every platform it supports.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from oaml.errors import DataError, MissingFileError

__all__ = [
    "MAGIC",
    "ImageRecordHeader",
    "RecordIOFile",
    "RecordIOWriter",
    "pack_image_record",
    "rebuild_index",
    "unpack_image_record",
    "write_recordio",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
_MAX_PART = 1 << 29

# Continuation flags of the length word (top 3 bits).
_WHOLE, _START, _MIDDLE, _END = 0, 1, 2, 3


@dataclass(frozen=True)
class ImageRecordHeader:
    """MXNet's IRHeader: `labels` holds the float32 label array when flag > 0, else the scalar label."""

    flag: int
    label: float
    id: int
    id2: int
    labels: tuple[float, ...] = ()

    @property
    def first_label(self) -> float:
        """The class label as InsightFace readers take it: labels[0] when flag > 0, else the scalar."""
        return self.labels[0] if self.flag > 0 else self.label


def pack_image_record(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Build a record payload the way `mxnet.recordio.pack` does.

    A scalar label gives flag 0; a sequence gives flag = its length with the labels as float32 after the
    24-byte header and the scalar label field set to 0.
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        return _IR_HEADER.pack(0, float(label), id, id2) + bytes(image)
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    return _IR_HEADER.pack(labels.size, 0.0, id, id2) + labels.tobytes() + bytes(image)


def unpack_image_record(payload: bytes, source: str = "record") -> tuple[ImageRecordHeader, bytes]:
    """Split a record payload into its header and the encoded image bytes (`mxnet.recordio.unpack`)."""
    if len(payload) < _IR_HEADER.size:
        raise DataError(
            f"{source}: payload of {len(payload)} bytes is shorter than the {_IR_HEADER.size}-byte image header"
        )
    flag, label, id_, id2 = _IR_HEADER.unpack_from(payload)
    body_start = _IR_HEADER.size + 4 * flag
    if len(payload) < body_start:
        raise DataError(f"{source}: header announces {flag} float labels but the payload ends before them")
    labels = tuple(float(v) for v in np.frombuffer(payload, dtype="<f4", count=flag, offset=_IR_HEADER.size))
    return ImageRecordHeader(flag, label, id_, id2, labels), payload[body_start:]


def _split_at_magic(payload: bytes) -> list[bytes]:
    """Parts of a payload cut at every 4-byte aligned occurrence of the magic word (dmlc WriteRecord)."""
    parts: list[bytes] = []
    start = 0
    aligned_end = len(payload) - len(payload) % 4
    position = payload.find(_MAGIC_BYTES)
    while 0 <= position < aligned_end:
        if position % 4 == 0 and position >= start:
            parts.append(payload[start:position])
            start = position + 4
            position = payload.find(_MAGIC_BYTES, start)
        else:
            position = payload.find(_MAGIC_BYTES, position + 1)
    parts.append(payload[start:])
    return parts


def _frame_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record: magic, length word, data, padding, split at magic words."""
    if len(payload) >= _MAX_PART:
        raise ValueError(f"RecordIO records must be shorter than 2^29 bytes, got {len(payload)}")
    parts = _split_at_magic(payload)
    out = io.BytesIO()
    for number, part in enumerate(parts):
        if len(parts) == 1:
            flag = _WHOLE
        elif number == 0:
            flag = _START
        elif number == len(parts) - 1:
            flag = _END
        else:
            flag = _MIDDLE
        out.write(_FRAME.pack(MAGIC, (flag << 29) | len(part)))
        out.write(part)
    out.write(b"\0" * (-len(payload) % 4))
    return out.getvalue()


class RecordIOWriter:
    """Writes an indexed RecordIO pair (`prefix.rec`, `prefix.idx`) record by record.

    Byte-compatible with `mxnet.recordio.MXIndexedRecordIO(..., "w").write_idx(key, payload)`: the same
    framing, and one ``key<TAB>offset`` line per record in the index.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        self._rec: BinaryIO = open(self.rec_path, "wb")  # noqa: SIM115 - closed by close()
        self._idx = open(self.idx_path, "w", encoding="ascii")  # noqa: SIM115

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under `key` (keys must be unique: the reader rejects repeated keys); returns its
        byte offset."""
        offset = self._rec.tell()
        self._rec.write(_frame_record(payload))
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def overwrite(self, offset: int, payload: bytes, expected_size: int) -> None:
        """Rewrite a record in place; the framed size must stay `expected_size` (used for header record 0)."""
        framed = _frame_record(payload)
        if len(framed) != expected_size:
            raise ValueError(f"in-place rewrite changes the record size ({expected_size} -> {len(framed)})")
        end = self._rec.tell()
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(end)

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_recordio(
    prefix: str | os.PathLike[str],
    items: Iterable[tuple[bytes, int | float | Sequence[float]]],
    header_record: bool = True,
) -> tuple[Path, Path]:
    """Write `prefix.rec` and `prefix.idx` from (encoded image bytes, label) pairs; returns both paths.

    With `header_record=True` (InsightFace's face-set layout) the file starts with header record 0 (flag 2,
    labels [id_start, id_end]), images get keys 1..N, and one identity record per class follows with the
    [first, last) image keys of that class. This requires integer labels 0..C-1, each class's images
    contiguous in `items` (any class order). With `header_record=False` every item is a record keyed 0..N-1
    with its own label (the layout of shuffled recs), and labels may be scalars or float sequences.
    Items are streamed; nothing but the per-class key ranges is kept in memory.
    """
    prefix = Path(prefix)
    rec_path, idx_path = prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx")
    try:
        with RecordIOWriter(rec_path, idx_path) as writer:
            if header_record:
                _write_face_set(writer, items)
            else:
                for key, (image, label) in enumerate(items):
                    writer.write(key, pack_image_record(label, image, id=key))
    except BaseException:
        rec_path.unlink(missing_ok=True)  # never leave a half-written pair that looks like a dataset
        idx_path.unlink(missing_ok=True)
        raise
    return rec_path, idx_path


def _write_face_set(writer: RecordIOWriter, items: Iterable[tuple[bytes, Any]]) -> None:
    """InsightFace's layout: header record 0, images 1..N, one identity record per class.

    Record 0 is written first as a placeholder of the final size and rewritten once N and C are known, so
    the items can be a stream."""
    placeholder = pack_image_record([0.0, 0.0], b"")
    header_offset = writer.write(0, placeholder)
    header_size = len(_frame_record(placeholder))
    ranges: dict[int, list[int]] = {}
    previous: int | None = None
    key = 0
    for key, (image, label) in enumerate(items, start=1):
        label_int = as_class_index(label, f"item {key - 1}")
        if label_int != previous:
            if label_int in ranges:
                raise ValueError(
                    f"write_recordio with header_record=True needs each class's images contiguous; class "
                    f"{label_int} appears again at item {key - 1} (sort the items by label, or pass "
                    f"header_record=False)"
                )
            ranges[label_int] = [key, key]
            previous = label_int
        ranges[label_int][1] = key + 1
        writer.write(key, pack_image_record(float(label_int), image, id=key))
    if not ranges:
        raise ValueError(f"write_recordio got no items for {writer.rec_path}")
    missing = sorted(set(range(max(ranges) + 1)) - set(ranges))
    if missing:
        raise ValueError(f"write_recordio: classes {missing[:10]} have no images; labels must be 0..C-1")
    id_start = key + 1
    for class_index in range(len(ranges)):
        first, last = ranges[class_index]
        writer.write(id_start + class_index, pack_image_record([float(first), float(last)], b""))
    id_end = id_start + len(ranges)
    header = pack_image_record([float(id_start), float(id_end)], b"")
    writer.overwrite(header_offset, header, header_size)


def as_class_index(label: Any, where: str) -> int:
    value = np.asarray(label, dtype=np.float64).reshape(-1)
    if value.size != 1 or not float(value[0]).is_integer() or value[0] < 0:
        raise DataError(f"{where}: label {label!r} is not a non-negative integer class index")
    return int(value[0])


def _read_index(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys and offsets (int64 arrays, file order) of a `.idx`; a malformed line raises with file:line.

    MS1MV2's index has 5.8M lines: numpy parses it in a fraction of a second, where a Python loop takes
    seconds and a dict of the offsets would take hundreds of MiB in every DataLoader worker.
    """
    raw = idx_path.read_bytes()
    tabs = raw.count(b"\t")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            numbers = np.fromstring(raw, dtype=np.int64, sep=" ")  # text mode: any whitespace separates
    except (ValueError, DeprecationWarning):
        numbers = None
    if numbers is None or numbers.size != 2 * tabs or raw.count(b"\n") + 1 < tabs:
        _raise_for_malformed_index(idx_path, raw)
    if tabs == 0:
        raise DataError(f"{idx_path} lists no records")
    pairs = numbers.reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _raise_for_malformed_index(idx_path: Path, raw: bytes) -> None:
    for line_number, line in enumerate(raw.decode("ascii", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not all(f.strip().lstrip("-").isdigit() for f in fields):
            raise DataError(
                f"{idx_path}:{line_number}: expected 'key<TAB>offset' with integers, got {line!r}"
            )
    raise DataError(f"{idx_path} is not a RecordIO index of 'key<TAB>offset' lines")


def rebuild_index(rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> Path:
    """Scan a `.rec` sequentially and write its `.idx`, numbering records 0, 1, 2, ... in file order.

    That numbering is how MXNet's im2rec and InsightFace's packers assign keys; it reads the whole file once.
    """
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    size = rec_path.stat().st_size
    lines: list[str] = []
    with open(rec_path, "rb") as rec:
        offset = 0
        while offset < size:
            lines.append(f"{len(lines)}\t{offset}\n")
            _read_framed(rec, offset, rec_path, key=len(lines) - 1, size=size)
            offset = rec.tell()
    tmp = idx_path.with_name(idx_path.name + f".tmp-{os.getpid()}")
    tmp.write_text("".join(lines), encoding="ascii")
    tmp.replace(idx_path)
    return idx_path


def _read_framed(
    handle: BinaryIO, offset: int, rec_path: Path, key: int, size: int, limit: int | None = None
) -> bytes:
    """Read the record at `offset`, rejoining split parts; stop early once `limit` payload bytes are known.

    Leaves the handle after the record's padding when it reads the whole record.
    """
    handle.seek(offset)
    parts: list[bytes] = []
    position = offset
    while True:
        frame = handle.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            raise DataError(
                f"{rec_path}: record key {key} is truncated: the file ends at byte {size} inside the "
                f"framing at byte {position} (the .rec is incomplete; re-download or re-pack it)"
            )
        magic, lrec = _FRAME.unpack(frame)
        if magic != MAGIC:
            raise DataError(
                f"{rec_path}: bad magic word 0x{magic:08X} at byte {position} for key {key} (expected "
                f"0x{MAGIC:08X}); the .idx does not match this .rec, or the file is not MXNet RecordIO"
            )
        flag, length = lrec >> 29, lrec & _LENGTH_MASK
        expected_flags = (_WHOLE, _START) if not parts else (_MIDDLE, _END)
        if flag not in expected_flags:
            raise DataError(
                f"{rec_path}: record key {key} has continuation flag {flag} at byte {position}, expected "
                f"one of {expected_flags}; the record framing is corrupt"
            )
        if limit is not None and flag in (_WHOLE, _START) and length >= limit:
            data = handle.read(limit)
            if len(data) < limit:
                raise _truncated(rec_path, key, position, size)
            return data
        data = handle.read(length)
        if len(data) < length:
            raise _truncated(rec_path, key, position, size)
        parts.append(data)
        position += _FRAME.size + length
        if flag in (_WHOLE, _END):
            handle.seek(-(position - offset) % 4, io.SEEK_CUR)
            return _MAGIC_BYTES.join(parts)


def _truncated(rec_path: Path, key: int, position: int, size: int) -> ValueError:
    return ValueError(
        f"{rec_path}: record key {key} at byte {position} is truncated: its length word points past the end "
        f"of the file ({size} bytes); the .rec is incomplete (re-download or re-pack it)"
    )


class RecordIOFile:
    """Random access to an indexed `.rec` by key; the file handle opens lazily in each process.

    DataLoader workers and DDP ranks are separate processes: a handle inherited through fork would share its
    file offset between processes, so the handle is re-opened whenever the process id changes and is never
    pickled. Construction reads only the `.idx`.
    """

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise MissingFileError(f"RecordIO file {self.rec_path} does not exist")
        if not self.idx_path.is_file():
            raise MissingFileError(
                f"index file {self.idx_path} for {self.rec_path} does not exist; write one with "
                f"oaml.data.formats.recordio_format.rebuild_index('{self.rec_path}') "
                "(one sequential pass over the .rec)"
            )
        self.size = self.rec_path.stat().st_size
        keys, offsets = _read_index(self.idx_path)
        outside = (offsets < 0) | (offsets >= self.size)
        if outside.any():
            bad = int(keys[np.argmax(outside)])
            raise DataError(
                f"{self.idx_path}: key {bad} points to an offset outside {self.rec_path} ({self.size} bytes): "
                f"the index key is not in the .rec (wrong or outdated .idx, or a truncated .rec)"
            )
        #: Keys in the order the index lists them.
        self.keys = keys
        order = np.argsort(keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
        repeated = np.flatnonzero(np.diff(self._sorted_keys) == 0)
        if repeated.size:
            raise DataError(f"{self.idx_path} lists key {int(self._sorted_keys[repeated[0]])} more than once")
        self._handle: BinaryIO | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.keys.size)

    def _position(self, key: int) -> int:
        """Position of `key` in the sorted key array, or -1 when absent."""
        position = int(np.searchsorted(self._sorted_keys, key))
        if position < self._sorted_keys.size and self._sorted_keys[position] == key:
            return position
        return -1

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (int, np.integer)) and self._position(int(key)) >= 0

    def offset(self, key: int) -> int:
        """Byte offset of the record stored under `key`; KeyError naming both files when absent."""
        position = self._position(key)
        if position < 0:
            raise KeyError(f"key {key} is not in the index {self.idx_path} of {self.rec_path}")
        return int(self._sorted_offsets[position])

    def _positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index positions of ``keys`` and a mask of the keys the index does not hold."""
        positions = np.minimum(np.searchsorted(self._sorted_keys, keys), self._sorted_keys.size - 1)
        return positions, self._sorted_keys[positions] != keys

    def missing_keys(self, keys: np.ndarray) -> np.ndarray:
        """The subset of ``keys`` that the index does not hold."""
        return keys[self._positions(keys)[1]]

    def offsets(self, keys: np.ndarray) -> np.ndarray:
        """Offsets of many keys at once (all must be present)."""
        positions, absent = self._positions(keys)
        if absent.any():
            raise KeyError(f"key {int(keys[np.argmax(absent)])} is not in the index {self.idx_path}")
        return self._sorted_offsets[positions]

    def _file(self) -> BinaryIO:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - lives as long as the reader
            self._pid = os.getpid()
        return self._handle

    def read(self, key: int) -> bytes:
        """The whole payload of the record stored under `key`."""
        return _read_framed(self._file(), self.offset(key), self.rec_path, key, self.size)

    def read_header(self, key: int) -> ImageRecordHeader:
        """Only the image header of a record: one seek and a read of at most 64 bytes (more for a header
        with over 10 float labels)."""
        return self.header_at(key, self.offset(key))

    def header_at(self, key: int, offset: int) -> ImageRecordHeader:
        """``read_header`` for a key whose offset the caller already has (a pass over many records)."""
        handle = self._file()
        prefix = _read_framed(handle, offset, self.rec_path, key, self.size, limit=64)
        if len(prefix) >= _IR_HEADER.size:
            needed = _IR_HEADER.size + 4 * _IR_HEADER.unpack_from(prefix)[0]
            if len(prefix) < needed:
                prefix = _read_framed(handle, offset, self.rec_path, key, self.size, limit=needed)
        return unpack_image_record(prefix, f"{self.rec_path} key {key}")[0]

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state
