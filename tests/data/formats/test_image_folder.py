"""ImageFolderDataset on folders written here: labels, layouts, sizes and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oaml.data.formats.image_folder import ImageFolderDataset
from oaml.data.synthetic.datasets import SyntheticFaces
from oaml.data.synthetic.export import export_synthetic


def _save(path, colour, size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _make_identities(root, layout):
    """layout: {folder: [(file name, colour)]}; PNG files keep colours exact."""
    for folder, files in layout.items():
        for name, colour in files:
            _save(root / folder / name, colour)


LAYOUT = {
    "id_10": [("b.png", (10, 0, 0)), ("a.png", (20, 0, 0))],
    "id_2": [("x.png", (0, 30, 0))],
    "alice": [("1.png", (0, 0, 40)), ("2.jpg", (0, 0, 50)), ("3.PNG", (0, 0, 60))],
}


def test_labels_follow_sorted_folder_names_without_decoding(tmp_path):
    _make_identities(tmp_path, LAYOUT)
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    (tmp_path / "alice" / "3.PNG").write_bytes(b"corrupt, but listing must not decode it")
    dataset = ImageFolderDataset(tmp_path)
    # string order: "alice" < "id_10" < "id_2"
    assert dataset.class_names == ["alice", "id_10", "id_2"]
    assert dataset.num_classes == 3
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert [dataset.path(i).name for i in range(len(dataset))] == [
        "1.png",
        "2.jpg",
        "3.PNG",
        "a.png",
        "b.png",
        "x.png",
    ]
    image, label, visibility = dataset[4]
    assert label == 1 and image.dtype == torch.uint8 and image.shape == (3, 20, 20)
    assert image[:, 0, 0].tolist() == [10, 0, 0]
    assert (
        visibility.dtype == torch.float32
        and visibility.shape == (1, 20, 20)
        and bool((visibility == 1).all())
    )
    with pytest.raises(ValueError, match=r"cannot decode image from .*alice/3\.PNG"):
        dataset[2]


def test_adaface_imgs_layout_and_class_count_from_data(tmp_path):
    root = tmp_path / "faces_webface_10575"  # a name that suggests a class count: must be ignored
    _make_identities(
        root / "imgs", {"0": [("0.jpg", (1, 2, 3))], "1": [("0.jpg", (4, 5, 6)), ("1.jpg", (7, 8, 9))]}
    )
    for path in (root, root / "imgs"):
        dataset = ImageFolderDataset(path)
        assert dataset.root == root / "imgs"
        assert dataset.num_classes == 2 and dataset.labels.tolist() == [0, 1, 1]


def test_empty_identity_folder_is_skipped_with_warning(tmp_path):
    _make_identities(tmp_path, {"a": [("0.png", (1, 1, 1))], "c": [("0.png", (2, 2, 2))]})
    (tmp_path / "b").mkdir()
    with pytest.warns(UserWarning, match=r"skipped 1 identity folders without images: \['b'\]"):
        dataset = ImageFolderDataset(tmp_path)
    assert dataset.class_names == ["a", "c"] and dataset.labels.tolist() == [0, 1]


def test_empty_root_and_missing_root_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no images with extensions"):
        ImageFolderDataset(tmp_path)
    _save(tmp_path / "loose.png", (1, 1, 1))  # an image outside any identity folder is not an identity
    (tmp_path / "empty_identity").mkdir()
    with pytest.raises(ValueError, match="no images with extensions"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_extensions_filter_resize_and_transform(tmp_path):
    _make_identities(tmp_path, LAYOUT)
    with pytest.warns(UserWarning, match="skipped 2 identity folders"):
        only_jpg = ImageFolderDataset(tmp_path, extensions=["jpg"])
    assert only_jpg.num_classes == 1 and len(only_jpg) == 1

    def darken(image, visibility):
        return image // 2, visibility

    resized = ImageFolderDataset(tmp_path, transform=darken, image_size=8)
    image, _, visibility = resized[3]
    assert image.shape == (3, 8, 8) and visibility.shape == (1, 8, 8)
    assert image[:, 4, 4].tolist() == [10, 0, 0]


def test_reads_the_synthetic_export_in_rgb(tmp_path):

    export_synthetic(
        tmp_path / "out", num_identities=3, images_per_identity=2, num_pairs=2, pair_identities=2, num_niqab=0
    )
    dataset = ImageFolderDataset(tmp_path / "out" / "identities")
    assert dataset.num_classes == 3 and dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    faces = SyntheticFaces(3, 2, seed=0, occluders={})
    for index in (0, 3, 5):
        image, label, _ = dataset[index]
        rendered, _ = faces.render(label, index % 2, None)
        difference = np.abs(image.permute(1, 2, 0).numpy().astype(int) - rendered.astype(int))
        swapped = np.abs(image.permute(1, 2, 0).numpy()[..., ::-1].astype(int) - rendered.astype(int))
        assert difference.mean() < 3.0 < swapped.mean()  # JPEG noise only; a BGR mix-up would be far off
