"""The AdaFace recipes run end to end on data in InsightFace's layout (a tiny stand-in for CASIA-WebFace)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from oaml.data.formats.recordio_format import write_recordio
from oaml.data.synthetic.export import export_synthetic
from oaml.train import train

STANDARD_SETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


@pytest.fixture(scope="module")
def faces_webface(tmp_path_factory) -> Path:
    """faces_webface_112x112/ as InsightFace ships it: train.rec + train.idx (with the identity header record)
    and the five verification .bin files (here all five hold the same synthetic pairs)."""
    exported = tmp_path_factory.mktemp("exported") / "data"
    export_synthetic(
        exported, num_identities=12, images_per_identity=4, num_pairs=40, pair_identities=16, seed=5
    )
    root = tmp_path_factory.mktemp("faces_webface_112x112")
    items = [
        (image.read_bytes(), label)
        for label, folder in enumerate(sorted((exported / "identities").iterdir()))
        for image in sorted(folder.glob("*.jpg"))
    ]
    write_recordio(root / "train", items, header_record=True)
    for name in STANDARD_SETS:
        shutil.copy(exported / "synthetic_val.bin", root / f"{name}.bin")
    return root


def test_casia_recipe_trains_on_recordio_and_validates_on_the_five_bins(
    tiny_train_config, faces_webface: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_train_config(
        "experiment=casia_ir50",
        f"data.train.root={faces_webface}",
        f"val.root={faces_webface}",
        # CPU-sized: the recipe's data path, augmentation and validation sets, with a tiny backbone.
        "backbone=ir_nano",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        run_dir=run_dir,
    )
    assert cfg.data.epoch_size == "images" and cfg.data.train._target_.endswith("RecordIODataset")
    metrics = train(cfg)
    for name in STANDARD_SETS:
        assert 0.0 <= metrics[f"val/{name}/fused_acc"] <= 1.0
        assert 0.0 <= metrics[f"val/{name}_occluded/qaconv_acc"] <= 1.0
    # The recipe's occluder augmentation supervises the OcclusionHead from the main stream.
    assert metrics["train/loss_occlusion"] > 0.0
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(metrics)
    # best.ckpt follows the recipe's monitor, CFP-FP's fused accuracy.
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
