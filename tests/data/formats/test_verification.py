"""Verification readers: InsightFace .bin (Python 2 pickles), its decoded cache, pair lists, standard sets."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from oaml.data.formats.verification import (
    STANDARD_VAL_SETS,
    BinVerificationDataset,
    PairListDataset,
    load_bin,
    standard_val_sets,
)
from oaml.data.synthetic.datasets import SyntheticPairs
from oaml.data.synthetic.export import export_synthetic


def _png(colour, size=(112, 112)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _python2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """The opcodes Python 2's cPickle (protocol 2) writes for (list of str, list of bool), as InsightFace's
    .bin files were made: str objects are BINSTRING, which Python 3 only reads with encoding='bytes'."""
    out = bytearray(b"\x80\x02")
    out += b"]q\x00("  # EMPTY_LIST, BINPUT 0, MARK
    for data in images:
        out += b"T" + struct.pack("<I", len(data)) + data
    out += b"e]q\x01("  # APPENDS, EMPTY_LIST, BINPUT 1, MARK
    for flag in issame:
        out += b"\x88" if flag else b"\x89"
    out += b"e\x86q\x02."  # APPENDS, TUPLE2, BINPUT 2, STOP
    return bytes(out)


COLOURS = [(200, 0, 0), (190, 10, 0), (0, 200, 0), (0, 0, 200), (50, 50, 50), (60, 60, 60)]
ISSAME = [True, False, True]


@pytest.fixture
def lfw_bin(tmp_path):
    path = tmp_path / "lfw.bin"
    path.write_bytes(_python2_pickle([_png(c) for c in COLOURS], ISSAME))
    return path


def test_python2_bin_loads_and_pairs_are_consecutive_items(lfw_bin):
    with pytest.raises(UnicodeDecodeError):  # why encoding='bytes' is needed
        pickle.loads(lfw_bin.read_bytes())
    dataset = BinVerificationDataset(lfw_bin)
    assert dataset.name == "lfw" and len(dataset) == 6
    assert dataset.issame.dtype == bool and dataset.issame.tolist() == ISSAME
    for index, colour in enumerate(COLOURS):
        image, visibility = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
        assert image[:, 5, 7].tolist() == list(colour)
        assert (
            visibility.dtype == torch.float32
            and visibility.shape == (1, 112, 112)
            and bool((visibility == 1).all())
        )


def test_cache_is_reused_while_the_bin_is_unchanged_and_rebuilt_when_it_changes(lfw_bin):
    BinVerificationDataset(lfw_bin)
    cache = lfw_bin.parent / "lfw.112x112.uint8"
    assert cache.stat().st_size == 6 * 3 * 112 * 112
    assert sorted(p.name for p in lfw_bin.parent.iterdir()) == [
        "lfw.112x112.json",
        "lfw.112x112.uint8",
        "lfw.bin",
    ]

    # Same size and mtime: the cache is trusted and the .bin is not read again (its new content is unseen).
    stat = lfw_bin.stat()
    swapped = [_png(c) for c in COLOURS]
    swapped[0], swapped[2] = swapped[2], swapped[0]
    replacement = _python2_pickle(swapped, ISSAME)
    assert len(replacement) == stat.st_size
    lfw_bin.write_bytes(replacement)
    os.utime(lfw_bin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert BinVerificationDataset(lfw_bin)[0][0][:, 0, 0].tolist() == [200, 0, 0]

    # A new mtime invalidates it.
    os.utime(lfw_bin, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert BinVerificationDataset(lfw_bin)[0][0][:, 0, 0].tolist() == [0, 200, 0]


def test_cache_dir_numpy_images_and_one_resize_warning(tmp_path):
    images = [
        np.frombuffer(_png(c, size=(96, 96) if i in (1, 4) else (112, 112)), dtype=np.uint8)
        for i, c in enumerate(COLOURS)
    ]
    path = tmp_path / "data" / "cfp_fp.bin"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps((images, ISSAME), protocol=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = BinVerificationDataset(path, cache_dir=tmp_path / "cache", image_size=112)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "resized 2 of 6 images to 112x112" in messages[0]
    assert (tmp_path / "cache" / "cfp_fp.112x112.uint8").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["cfp_fp.bin"]
    assert dataset[4][0].shape == (3, 112, 112) and dataset[4][0][:, 50, 50].tolist() == [50, 50, 50]


def test_pickled_dataset_does_not_carry_the_images(lfw_bin):
    dataset = BinVerificationDataset(lfw_bin)
    dataset[0]
    blob = pickle.dumps(dataset)
    assert len(blob) < 6 * 3 * 112 * 112 // 10
    assert torch.equal(pickle.loads(blob)[3][0], dataset[3][0])


def test_corrupt_image_is_named_and_leaves_no_cache(tmp_path):
    images = [_png(c) for c in COLOURS]
    images[3] = b"\x89PNG broken"
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(_python2_pickle(images, ISSAME))
    with pytest.raises(ValueError, match=r"cannot decode image from .*agedb_30\.bin image 3"):
        BinVerificationDataset(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agedb_30.bin"]


def test_bad_bin_files(tmp_path):
    uneven = tmp_path / "uneven.bin"
    uneven.write_bytes(_python2_pickle([_png(c) for c in COLOURS[:5]], ISSAME))
    with pytest.raises(ValueError, match="5 images for 3 pairs"):
        load_bin(uneven)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should never run",))

    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(([Evil()], [True])))
    with pytest.raises(
        ValueError, match=r"evil\.bin is not an InsightFace verification \.bin.*refusing to load"
    ):
        load_bin(evil)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        BinVerificationDataset(tmp_path / "missing.bin")


def _write_pair_list(root, text):
    for name, colour in (("a.png", (1, 2, 3)), ("b.png", (4, 5, 6)), ("sub/c.png", (7, 8, 9))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (112, 112), colour).save(root / name)
    Image.new("RGB", (64, 64), (10, 11, 12)).save(root / "small.png")
    (root / "pairs.txt").write_text(text)
    return root / "pairs.txt"


def test_pair_list(tmp_path):
    absolute = tmp_path / "a.png"
    text = f"# my pairs\n\na.png sub/c.png 1\n  b.png {absolute} 0  \n# trailing comment\nsmall.png a.png 1\n"
    dataset = PairListDataset(_write_pair_list(tmp_path, text))
    assert dataset.name == "pairs" and len(dataset) == 6
    assert dataset.issame.tolist() == [True, False, True]
    assert [dataset[i][0][:, 0, 0].tolist() for i in range(4)] == [[1, 2, 3], [7, 8, 9], [4, 5, 6], [1, 2, 3]]
    with pytest.warns(UserWarning, match="not of size 112x112 are resized"):
        image, visibility = dataset[4]
    assert image.shape == (3, 112, 112) and image[:, 60, 60].tolist() == [10, 11, 12]
    assert visibility.shape == (1, 112, 112)


@pytest.mark.parametrize(
    ("line", "error", "pattern"),
    [
        ("a.png b.png", ValueError, r"pairs\.txt:3: expected 'path_a path_b 0\|1'"),
        ("a.png b.png yes", ValueError, r"pairs\.txt:3: expected"),
        ("a.png b.png 1 extra", ValueError, r"pairs\.txt:3: expected"),
        ("a.png gone.png 0", FileNotFoundError, r"pairs\.txt:3: image .*gone\.png does not exist"),
    ],
)
def test_malformed_pair_lines_name_file_and_line(tmp_path, line, error, pattern):
    path = _write_pair_list(tmp_path, f"# header\na.png b.png 1\n{line}\n")
    with pytest.raises(error, match=pattern):
        PairListDataset(path)


def test_empty_pair_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="lists no pairs"):
        PairListDataset(_write_pair_list(tmp_path, "# nothing\n\n"))


def test_standard_val_sets(tmp_path):
    for name in ("lfw", "cfp_fp", "agedb_30"):
        (tmp_path / f"{name}.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"lacks the verification sets \['calfw', 'cplfw'\]"):
        standard_val_sets(tmp_path)
    for name in ("calfw", "cplfw"):
        (tmp_path / f"{name}.bin").write_bytes(b"x")
    found = standard_val_sets(tmp_path)
    assert list(found) == list(STANDARD_VAL_SETS)
    assert found["agedb_30"] == tmp_path / "agedb_30.bin"


def test_synthetic_export_bin_and_pair_list_agree(tmp_path):

    out = tmp_path / "out"
    export_synthetic(
        out, num_identities=2, images_per_identity=1, num_pairs=6, pair_identities=4, num_niqab=0
    )
    from_bin = BinVerificationDataset(out / "synthetic_val.bin", cache_dir=tmp_path / "cache")
    from_list = PairListDataset(out / "pairs" / "pairs.txt")
    expected = np.asarray(SyntheticPairs(6, 4, seed=0, first_identity=100_000).issame, dtype=bool)
    assert from_bin.name == "synthetic_val" and from_list.name == "pairs"
    assert np.array_equal(from_bin.issame, expected) and np.array_equal(from_list.issame, expected)
    assert len(from_bin) == len(from_list) == 12
    for index in range(12):
        assert torch.equal(from_bin[index][0], from_list[index][0])
