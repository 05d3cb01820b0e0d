from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oaml.data.synthetic.datasets import SyntheticPairs
from oaml.data.synthetic.export import export_synthetic, main


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "synthetic"
    summary = export_synthetic(
        out, num_identities=3, images_per_identity=2, num_pairs=10, seed=4, num_niqab=4, pair_identities=4
    )
    assert summary["identity_images"] == 6 and summary["genuine_pairs"] == 5
    return out


def _read_pairs(path: Path) -> list[tuple[str, str, int]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(len(row) == 3 for row in rows)
    return [(a, b, int(label)) for a, b, label in rows]


def test_identity_folders(exported):
    folders = sorted(p.name for p in (exported / "identities").iterdir())
    assert folders == ["00000", "00001", "00002"]
    for folder in folders:
        files = sorted(p.name for p in (exported / "identities" / folder).iterdir())
        assert files == ["0000.jpg", "0001.jpg"]
        with Image.open(exported / "identities" / folder / "0000.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (112, 112)


def test_niqab_faces_and_masks(exported):
    kept = sorted((exported / "niqab" / "kept_faces").iterdir())
    masks = sorted((exported / "niqab" / "masks").iterdir())
    assert len(kept) == 4 and len(masks) == 4
    assert [p.stem + "_mask.png" for p in kept] == [p.name for p in masks]
    assert kept[0].name == "00000_0002.jpg"  # identity 0, an image index past the identity folder's images
    for face_path, mask_path in zip(kept, masks):
        with Image.open(mask_path) as mask_image, Image.open(face_path) as face:
            assert mask_image.mode == "L" and mask_image.size == face.size
            mask = np.asarray(mask_image)
        assert set(np.unique(mask)) == {0, 255}
        visible = (mask == 255).mean()
        assert 0.05 < visible < 0.45  # the eye band of a niqab (on a posed, scaled face)
        rows = np.nonzero((mask == 255).any(axis=1))[0]
        assert rows.min() > 25 and rows.max() < 75


def test_pair_lists_and_bins_agree(exported):
    pairs_dir = exported / "pairs"
    clean = _read_pairs(pairs_dir / "pairs.txt")
    occluded = _read_pairs(pairs_dir / "pairs_occluded.txt")
    assert len(clean) == 10 and sum(label for *_, label in clean) == 5
    assert [label for *_, label in clean] == [label for *_, label in occluded]
    for (a, b, _), (oa, ob, _) in zip(clean, occluded):
        assert (pairs_dir / a).is_file() and (pairs_dir / b).is_file()
        assert (pairs_dir / oa).is_file() and (pairs_dir / ob).is_file()
        assert [p.startswith("occluded/") for p in (oa, ob)].count(True) == 1  # occluded-clean protocol
        for path in (oa, ob):
            if path.startswith("occluded/"):
                mask_path = pairs_dir / "masks" / (Path(path).stem + "_mask.png")
                assert set(np.unique(np.asarray(Image.open(mask_path)))) <= {0, 255}
            else:
                assert path in (a, b)

    for name, rows in (("synthetic_val.bin", clean), ("synthetic_val_occluded.bin", occluded)):
        raw = (exported / name).read_bytes()
        assert raw[:2] == b"\x80\x04"  # pickle protocol 4
        images, issame = pickle.loads(raw, encoding="bytes")
        assert isinstance(images, list) and isinstance(issame, list)
        assert len(images) == 20 and issame == [bool(label) for *_, label in rows]
        assert all(type(flag) is bool for flag in issame)
        for i, (a, b, _) in enumerate(rows):  # pair i is images 2i and 2i + 1, the same files as the list
            assert images[2 * i] == (pairs_dir / a).read_bytes()
            assert images[2 * i + 1] == (pairs_dir / b).read_bytes()
        with Image.open(io.BytesIO(images[0])) as first:
            assert first.format == "JPEG" and first.size == (112, 112)

    # The files hold the SyntheticPairs images (up to JPEG loss).
    reference, _ = SyntheticPairs(10, 4, seed=4).render(0)
    decoded = np.asarray(Image.open(pairs_dir / clean[0][0]), np.float32)
    assert np.abs(decoded - reference).mean() < 4.0


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        export_synthetic(tmp_path, num_identities=2, images_per_identity=1, num_pairs=2, pair_identities=2)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--identities", "2", "--images-per-identity", "1", "--pairs", "2"])
    assert exit_info.value.code == 2


def test_invalid_arguments_leave_no_folder(tmp_path):
    with pytest.raises(ValueError, match="num_pairs"):
        export_synthetic(tmp_path / "new", num_identities=2, images_per_identity=1, num_pairs=0)
    assert not (tmp_path / "new").exists()


def test_cli_writes_into_an_existing_empty_folder(tmp_path):
    command = [
        sys.executable, "-m", "oaml.data.synthetic.export", "--out", str(tmp_path),
        "--identities", "2", "--images-per-identity", "1", "--pairs", "2", "--pair-identities", "2",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "identity_images=2" in result.stdout
    assert len(list((tmp_path / "identities").iterdir())) == 2
    assert len(list((tmp_path / "niqab" / "kept_faces").iterdir())) == 2
    assert len(_read_pairs(tmp_path / "pairs" / "pairs.txt")) == 2
