"""Bad data never trains silently: each check names the file or the key (issue 13)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from oaml.data.formats.image_folder import ImageFolderDataset
from oaml.data.formats.niqab import NiqabMaskDataset
from oaml.data.formats.recordio import RecordIODataset
from oaml.data.formats.recordio_format import write_recordio
from oaml.errors import ConfigError, DataError, user_error_message
from oaml.train import train


def _face(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _jpeg(seed: int, size: int = 112) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_face(seed, size)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _identities(root, people: int = 3, images: int = 4) -> None:
    for person in range(people):
        folder = root / f"person_{person}"
        folder.mkdir(parents=True)
        for image in range(images):
            (folder / f"{image}.jpg").write_bytes(_jpeg(10 * person + image))


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # header intact, scan data cut: fails only when decoded


# ------------------------------------------------------------------------------------------- masks
def _niqab(root, mask: np.ndarray, names=("a", "b")) -> None:
    (root / "kept_faces").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, name in enumerate(names):
        Image.fromarray(_face(seed)).save(root / "kept_faces" / f"{name}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")


def test_a_mask_of_another_size_than_its_image_is_refused_naming_both(tmp_path) -> None:
    _niqab(tmp_path, np.full((112, 112), 255, np.uint8))
    Image.fromarray(np.full((80, 64), 255, np.uint8)).save(
        tmp_path / "masks" / "b_mask.png"
    )  # 64 wide, 80 high
    with pytest.raises(
        DataError,
        match=r"1 masks differ in size from their image \(first: b_mask.png is 64x80, b.jpg 112x112",
    ):
        NiqabMaskDataset(tmp_path, split="all")


def test_grey_masks_are_fractional_visibility(tmp_path) -> None:
    mask = np.full((112, 112), 255, np.uint8)
    mask[:, :56] = 128  # left half: half visible (a thin veil)
    _niqab(tmp_path, mask)
    target = NiqabMaskDataset(tmp_path, split="all", augment=False)[0][1][0]
    # 7x7 cells of 16 pixels: the left 3.5 columns read 128/255, the middle column is half and half.
    assert torch.allclose(target[:, :3], torch.full((7, 3), 128 / 255), atol=1e-6)
    assert torch.allclose(target[:, 3], torch.full((7,), (128 / 255 + 1) / 2), atol=1e-6)
    assert torch.allclose(target[:, 4:], torch.ones(7, 3))


# -------------------------------------------------------------------------------- unreadable images
def test_on_bad_image_error_names_the_file_in_one_line_from_a_loader_worker(tmp_path) -> None:
    _identities(tmp_path)
    _truncate(tmp_path / "person_1" / "2.jpg")
    dataset = ImageFolderDataset(tmp_path)  # on_bad_image="error"
    loader = DataLoader(dataset, batch_size=4, num_workers=1)
    with pytest.raises(DataError) as caught:
        list(loader)
    message = user_error_message(caught.value, caught.value)
    assert message.startswith(f"DataError: cannot decode image from {tmp_path / 'person_1' / '2.jpg'}: ")
    assert "\n" not in message
    with pytest.raises(ConfigError, match="data.on_bad_image must be one of"):
        ImageFolderDataset(tmp_path, on_bad_image="ignore")


def test_on_bad_image_skip_uses_another_image_of_the_identity_warns_once_and_counts(tmp_path) -> None:
    _identities(tmp_path)
    _truncate(tmp_path / "person_1" / "2.jpg")
    (tmp_path / "person_2" / "0.jpg").write_bytes(b"not an image")
    dataset = ImageFolderDataset(tmp_path, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"skipped unreadable training image .*person_1/2\.jpg"):
        image, label, _ = dataset[6]
    assert label == 1 and torch.equal(image, dataset[7][0])  # the next image of person_1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file: no second warning
        dataset[6]
    with pytest.warns(UserWarning, match=r"person_2/0\.jpg"):
        dataset[8]
    # Loader workers share the count (one byte per file in shared memory); each file counts once.
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    labels = torch.cat([batch[1] for batch in loader]).tolist()
    assert labels == dataset.labels.tolist()
    assert dataset.bad_images.count == 2

    for name in ("0.jpg", "1.jpg", "3.jpg"):
        (tmp_path / "person_1" / name).write_bytes(b"")
    with pytest.raises(DataError, match="no readable image of identity 1"):
        ImageFolderDataset(tmp_path, on_bad_image="skip")[5]


def test_a_run_with_skipped_images_reports_them_in_metrics_json(tiny_train_config, tmp_path) -> None:
    _identities(tmp_path / "faces", people=8, images=4)
    _truncate(tmp_path / "faces" / "person_3" / "1.jpg")
    run = tmp_path / "run"
    cfg = tiny_train_config(
        "data=image_folder",
        f"data.train.root={tmp_path / 'faces'}",
        "data.on_bad_image=skip",
        "data.batch_size=16",  # 4 identities x 4 images: every image is read in 2 steps
        "data.num_workers=0",
        "trainer.max_steps=2",
        "val=synthetic",
        "val.sets.synthetic.num_pairs=20",
        "val.sets.synthetic.num_identities=8",
        "val.sets.synthetic_occluded.num_pairs=20",
        "val.sets.synthetic_occluded.num_identities=8",
        "print_metrics=false",
        run_dir=run,
    )
    with pytest.warns(UserWarning, match=r"person_3/1\.jpg"):
        train(cfg)
    assert json.loads((run / "metrics.json").read_text())["data/bad_images_skipped"] == 1.0


# ----------------------------------------------------------------------------------------- RecordIO
def test_a_rec_whose_labels_do_not_start_at_0_is_named(tmp_path) -> None:
    items = [(_jpeg(i, 24), 1 + i // 2) for i in range(6)]  # labels 1, 1, 2, 2, 3, 3
    write_recordio(tmp_path / "train", items, header_record=False)
    with pytest.warns(
        UserWarning, match=r"train\.rec: labels run from 1 to 3, not from 0; classes 0\.\.0 have no images"
    ):
        dataset = RecordIODataset(tmp_path)
    assert dataset.num_classes == 4
