"""RecordIO: byte-exact against MXNet's own output, InsightFace layouts, and every broken-file error."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from oaml.data.formats.image_folder import ImageFolderDataset
from oaml.data.formats.recordio import RecordIODataset
from oaml.data.formats.recordio_format import (
    MAGIC,
    RecordIOFile,
    RecordIOWriter,
    pack_image_record,
    rebuild_index,
    unpack_image_record,
    write_recordio,
)
from oaml.data.synthetic.export import export_synthetic

M = struct.pack("<I", MAGIC)

# Written by mxnet 1.9.1 (`mx.recordio.MXIndexedRecordIO(idx, rec, "w").write_idx(5 + 3 * k, payload)`)
# for the payloads below: empty, unpadded, a lone magic word, magic words at aligned positions (split),
# an unaligned magic word (not split) and a magic word at the aligned end.
RAW_PAYLOADS = [
    b"",
    b"abc",
    b"abcd",
    M,
    M + b"xy",
    b"abcd" + M + b"efgh" + M + M + b"ij",
    b"a" + M + b"bcd",
    b"abcdefgh" + M,
    b"ab" + M + b"cd" + b"wxyz" + M,
]
MXNET_RAW_REC = bytes.fromhex(
    "0a23d7ce000000000a23d7ce03000000616263000a23d7ce04000000616263640a23d7ce000000200a23d7ce00000060"
    "0a23d7ce000000200a23d7ce02000060787900000a23d7ce04000020616263640a23d7ce04000040656667680a23d7ce"
    "000000400a23d7ce02000060696a00000a23d7ce08000000610a23d7ce6263640a23d7ce080000206162636465666768"
    "0a23d7ce000000600a23d7ce0c00002061620a23d7ce63647778797a0a23d7ce00000060"
)
MXNET_RAW_IDX = "5\t0\n8\t8\n11\t20\n14\t32\n17\t48\n20\t68\n23\t112\n26\t128\n29\t152\n"

# An InsightFace face-set layout written by mxnet 1.9.1: header record 0 (flag 2, [id_start, id_end]),
# images keys 1..5 with labels SMALL_LABELS (two payloads hold an aligned magic word), identity records 6..8.
SMALL_LABELS = [0, 0, 1, 2, 2]
SMALL_PAYLOADS = [b"img0", b"img1+", M + b"im2", b"img3" + M, b"i4"]
MXNET_SMALL_REC = bytes.fromhex(
    "0a23d7ce200000000200000000000000000000000000000000000000000000000000c040000010410a23d7ce1c000000"
    "000000000000000001000000000000000000000000000000696d67300a23d7ce1d000000000000000000000002000000"
    "000000000000000000000000696d67312b0000000a23d7ce18000020000000000000803f030000000000000000000000"
    "000000000a23d7ce03000060696d32000a23d7ce1c000020000000000000004004000000000000000000000000000000"
    "696d67330a23d7ce000000600a23d7ce1a00000000000000000000400500000000000000000000000000000069340000"
    "0a23d7ce200000000200000000000000000000000000000000000000000000000000803f000040400a23d7ce20000000"
    "02000000000000000000000000000000000000000000000000004040000080400a23d7ce200000000200000000000000"
    "00000000000000000000000000000000000080400000c040"
)
MXNET_SMALL_IDX = "0\t0\n1\t40\n2\t76\n3\t116\n4\t160\n5\t204\n6\t240\n7\t280\n8\t320\n"


def _jpeg(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    ramp = np.linspace(0, 60, size)[None, :, None]
    array = np.clip(base + ramp + rng.integers(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_writer_is_byte_identical_to_mxnet_and_reader_reads_mxnet_output(tmp_path):
    (tmp_path / "mx.rec").write_bytes(MXNET_RAW_REC)
    (tmp_path / "mx.idx").write_text(MXNET_RAW_IDX)
    reader = RecordIOFile(tmp_path / "mx.rec")
    assert reader.keys.tolist() == [5 + 3 * k for k in range(len(RAW_PAYLOADS))]
    for k, payload in enumerate(RAW_PAYLOADS):
        assert reader.read(5 + 3 * k) == payload

    with RecordIOWriter(tmp_path / "ours.rec", tmp_path / "ours.idx") as writer:
        for k, payload in enumerate(RAW_PAYLOADS):
            writer.write(5 + 3 * k, payload)
    assert (tmp_path / "ours.rec").read_bytes() == MXNET_RAW_REC
    assert (tmp_path / "ours.idx").read_text() == MXNET_RAW_IDX


def test_write_recordio_face_layout_matches_mxnet(tmp_path):
    rec, idx = write_recordio(tmp_path / "train", zip(SMALL_PAYLOADS, SMALL_LABELS))
    assert rec.read_bytes() == MXNET_SMALL_REC
    assert idx.read_text() == MXNET_SMALL_IDX
    records = RecordIOFile(rec)
    header = records.read_header(0)
    assert (header.flag, header.labels) == (2, (6.0, 9.0))
    assert [records.read_header(k).labels for k in (6, 7, 8)] == [(1.0, 3.0), (3.0, 4.0), (4.0, 6.0)]
    for key, (payload, label) in enumerate(zip(SMALL_PAYLOADS, SMALL_LABELS), start=1):
        head, body = unpack_image_record(records.read(key))
        assert (head.flag, head.label, head.id, body) == (0, float(label), key, payload)


def test_pack_unpack_round_trip_with_float_labels():
    header, body = unpack_image_record(pack_image_record([3.0, 0.25, 7.0], b"jpeg", id=9, id2=4))
    assert (header.flag, header.label, header.labels, header.id, header.id2) == (
        3,
        0.0,
        (3.0, 0.25, 7.0),
        9,
        4,
    )
    assert header.first_label == 3.0 and body == b"jpeg"
    with pytest.raises(ValueError, match="shorter than the 24-byte image header"):
        unpack_image_record(b"short")


@pytest.fixture
def face_rec(tmp_path):
    """A face-set rec (header record) with 7 JPEGs of 3 identities; image 4 carries an aligned magic word."""
    labels = [0, 0, 0, 1, 1, 2, 2]
    images = [_jpeg(i) for i in range(len(labels))]
    images[4] = images[4] + b"\0" * (-len(images[4]) % 4) + M + b"trailing bytes after the JPEG end marker"
    write_recordio(tmp_path / "train", zip(images, labels))
    return tmp_path, images, labels


def test_dataset_with_header_record(face_rec):
    root, images, labels = face_rec
    dataset = RecordIODataset(root)
    assert len(dataset) == 7 and dataset.num_classes == 3
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == labels
    # the magic word inside image 4's payload made the writer split that record; the reader rejoins it
    assert RecordIOFile(root / "train.rec").read(5).endswith(M + b"trailing bytes after the JPEG end marker")
    for index in range(len(dataset)):
        image, label, visibility = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
        assert (
            visibility.dtype == torch.float32
            and visibility.shape == (1, 24, 24)
            and bool((visibility == 1).all())
        )
        assert label == labels[index]
        assert np.array_equal(image.permute(1, 2, 0).numpy(), _decoded(images[index]))


def test_dataset_applies_transform_to_image_and_visibility(face_rec):
    root, _, _ = face_rec

    def halve(image, visibility):
        return image // 2, visibility * 0.5

    image, _, visibility = RecordIODataset(root / "train.rec", transform=halve)[0]
    plain, _, _ = RecordIODataset(root / "train.rec")[0]
    assert torch.equal(image, plain // 2) and bool((visibility == 0.5).all())


def test_shuffled_rec_without_header_reads_every_key_label(tmp_path):
    labels = [3, 1, [0.0, 9.5], 2, [1.0, 4.0]]  # flag-0 scalars and flag>0 label arrays mixed
    images = [_jpeg(10 + i) for i in range(len(labels))]
    write_recordio(tmp_path / "shuffled", zip(images, labels), header_record=False)
    dataset = RecordIODataset(tmp_path / "shuffled.rec")
    assert dataset.labels.tolist() == [3, 1, 0, 2, 1] and dataset.num_classes == 4
    assert [dataset[i][1] for i in range(5)] == [3, 1, 0, 2, 1]
    assert np.array_equal(dataset[3][0].permute(1, 2, 0).numpy(), _decoded(images[3]))


def test_start_up_reads_no_image_record(face_rec):
    """With a header record the index comes from record 0 and the identity records alone."""
    root, _, _ = face_rec
    records = RecordIOFile(root / "train.rec")
    offset = records.offset(3)
    data = bytearray((root / "train.rec").read_bytes())
    data[offset : offset + 4] = b"XXXX"
    (root / "train.rec").write_bytes(bytes(data))
    dataset = RecordIODataset(root)
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    dataset[0]
    with pytest.raises(ValueError, match=r"train\.rec: bad magic word 0x58585858 at byte \d+ for key 3"):
        dataset[2]


def test_missing_index_names_file_and_rebuild_index_restores_it(face_rec):
    root, _, labels = face_rec
    original = (root / "train.idx").read_text()
    (root / "train.idx").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"train\.idx .* does not exist; write one with .*rebuild_index"
    ):
        RecordIODataset(root)
    rebuild_index(root / "train.rec")
    assert (root / "train.idx").read_text() == original
    assert RecordIODataset(root).labels.tolist() == labels


def test_truncated_rec_is_reported_with_key(face_rec, tmp_path):
    root, _, _ = face_rec
    rec = root / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-6])  # cuts the last identity record (key 10)
    with pytest.raises(ValueError, match=r"train\.rec: record key 10 at byte \d+ is truncated"):
        RecordIODataset(root)

    write_recordio(tmp_path / "shuffled", zip([_jpeg(0), _jpeg(1)], [0, 1]), header_record=False)
    shuffled = tmp_path / "shuffled.rec"
    shuffled.write_bytes(shuffled.read_bytes()[:-100])  # the last image loses its tail, its header survives
    dataset = RecordIODataset(shuffled)
    assert dataset.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"shuffled\.rec: record key 1 at byte \d+ is truncated"):
        dataset[1]


def test_index_key_not_in_rec(face_rec):
    root, _, _ = face_rec
    with open(root / "train.idx", "a") as handle:
        handle.write("99\t123456789\n")
    with pytest.raises(
        ValueError, match=r"train\.idx: key 99 points to an offset outside .*not in the \.rec"
    ):
        RecordIODataset(root)


def test_header_announces_keys_missing_from_index(face_rec):
    root, _, _ = face_rec
    lines = (root / "train.idx").read_text().splitlines()
    (root / "train.idx").write_text("\n".join(line for line in lines if not line.startswith("6\t")) + "\n")
    with pytest.raises(ValueError, match=r"train\.idx: 1 image keys .* not in the index \(first: \[6\]\)"):
        RecordIODataset(root)


def test_malformed_index_line_names_file_and_line(face_rec):
    root, _, _ = face_rec
    lines = (root / "train.idx").read_text().splitlines()
    lines[2] = "2 96"
    (root / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train\.idx:3: expected 'key<TAB>offset'"):
        RecordIOFile(root / "train.rec")


def test_corrupt_jpeg_in_record_names_rec_and_key(tmp_path):
    images = [_jpeg(0), b"\xff\xd8\xff\xe0 this is not a JPEG", _jpeg(2)]
    write_recordio(tmp_path / "train", zip(images, [0, 1, 2]))
    dataset = RecordIODataset(tmp_path)
    with pytest.raises(ValueError, match=r"cannot decode image from .*train\.rec key 2"):
        dataset[1]


def _rec_with_wrong_header_label(path, count: int, wrong_position: int) -> None:
    """`count` images, one class each, whose identity records are right but image `wrong_position`'s header
    label is not its class."""
    id_start = count + 1
    with RecordIOWriter(path / "train.rec", path / "train.idx") as writer:
        writer.write(0, pack_image_record([float(id_start), float(id_start + count)], b""))
        for position in range(count):
            label = count - 1 if position == wrong_position else position
            writer.write(position + 1, pack_image_record(float(label), _jpeg(position, size=8)))
        for position in range(count):
            writer.write(id_start + position, pack_image_record([position + 1.0, position + 2.0], b""))


def test_header_labels_disagreeing_with_identity_records_are_errors(tmp_path):
    (tmp_path / "first").mkdir()
    _rec_with_wrong_header_label(tmp_path / "first", 20, wrong_position=0)
    with pytest.raises(
        ValueError, match="image key 1 has label 19.0 in its header but belongs to identity record 0"
    ):
        RecordIODataset(tmp_path / "first")

    # start-up spot-checks 16 of 20 images; position 4 is not among them, reading it finds the mismatch
    (tmp_path / "later").mkdir()
    _rec_with_wrong_header_label(tmp_path / "later", 20, wrong_position=4)
    dataset = RecordIODataset(tmp_path / "later")
    assert dataset.labels.tolist() == list(range(20))
    assert dataset[3][1] == 3
    with pytest.raises(
        ValueError, match="key 5: the image header says label 19.0 but the identity records say 4"
    ):
        dataset[4]


def test_write_recordio_rejects_non_contiguous_classes(tmp_path):
    with pytest.raises(ValueError, match="class 0 appears again at item 2"):
        write_recordio(tmp_path / "bad", zip([b"a", b"b", b"c"], [0, 1, 0]))
    with pytest.raises(ValueError, match=r"classes \[1\] have no images"):
        write_recordio(tmp_path / "gap", zip([b"a", b"b"], [0, 2]))
    assert list(tmp_path.iterdir()) == []  # no half-written pair left behind


def test_pickled_dataset_carries_no_file_handle_and_workers_read_it(face_rec):
    root, images, labels = face_rec
    dataset = RecordIODataset(root)
    dataset[0]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.record_file._handle is None
    assert torch.equal(clone[6][0], dataset[6][0])

    loader = DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False)
    seen_labels = torch.cat([batch[1] for batch in loader]).tolist()
    assert seen_labels == labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "synthetic"
    export_synthetic(
        out, num_identities=4, images_per_identity=3, num_pairs=4, pair_identities=4, num_niqab=2
    )
    return out


def _identity_items(identities_dir):
    return [
        (path.read_bytes(), label)
        for label, folder in enumerate(sorted(p for p in identities_dir.iterdir() if p.is_dir()))
        for path in sorted(folder.glob("*.jpg"))
    ]


@pytest.mark.parametrize("header_record", [True, False])
def test_rec_packed_from_the_synthetic_export_matches_the_image_folder(exported, tmp_path, header_record):

    items = _identity_items(exported / "identities")
    write_recordio(tmp_path / "train", items, header_record=header_record)
    dataset = RecordIODataset(tmp_path)
    folder = ImageFolderDataset(exported / "identities")
    assert dataset.num_classes == folder.num_classes == 4
    assert dataset.labels.tolist() == folder.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for index in (0, 5, 11):
        image, label, visibility = dataset[index]
        expected, expected_label, _ = folder[index]
        assert image.shape == (3, 112, 112) and label == expected_label
        assert torch.equal(image, expected) and bool((visibility == 1).all())


def test_image_size_resizes_stored_faces_for_a_224_backbone(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), 90, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    write_recordio(tmp_path / "train", [(buffer.getvalue(), 0), (buffer.getvalue(), 1)], header_record=True)
    as_stored = RecordIODataset(tmp_path)[0]
    resized = RecordIODataset(tmp_path, image_size=224)[0]
    assert as_stored[0].shape == (3, 112, 112) and as_stored[2].shape == (1, 112, 112)
    assert resized[0].shape == (3, 224, 224) and resized[2].shape == (1, 224, 224)
    assert abs(float(resized[0].float().mean()) - float(as_stored[0].float().mean())) < 1.0
