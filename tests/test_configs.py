"""Every config option composes, and the real recipes say what they claim (verified by construction)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate


def _compose(*overrides: str, name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("option", _options("backbone"))
def test_every_backbone_option_names_a_registered_backbone(option: str) -> None:
    from oaml.models import BACKBONE_NAMES

    cfg = _compose(f"backbone={option}")
    assert cfg.backbone.name in BACKBONE_NAMES


@pytest.mark.parametrize("group", ["head", "loss", "optimizer", "trainer", "data", "val", "masks", "matcher"])
def test_every_option_of_a_group_composes(group: str) -> None:
    for option in _options(group):
        _compose(f"{group}={option}")


def test_casia_recipe_is_adaface_recipe_with_image_epochs() -> None:
    cfg = _compose("experiment=casia_ir50", "data.train.root=/data/casia", "val.root=/data/casia")
    assert cfg.backbone.name == "ir50"
    assert cfg.data.train._target_ == "oaml.data.formats.recordio.RecordIODataset"
    assert cfg.data.batch_size == 512 and cfg.data.epoch_size == "images"
    assert list(cfg.optimizer.lr_scheduler.milestones) == [12, 20, 24] and cfg.trainer.max_epochs == 26
    assert cfg.optimizer.optimizer.lr == 0.1 and cfg.optimizer.optimizer.weight_decay == 5e-4
    assert (cfg.head.m, cfg.head.h, cfg.head.s, cfg.head.t_alpha) == (0.4, 0.333, 64.0, 0.01)
    assert (cfg.loss.adaface, cfg.loss.qaconv, cfg.loss.occlusion) == (0.1, 0.9, 1.0)
    assert cfg.loss.occlusion_loss.kind == "bce" and cfg.occlusion.input_stage == "image"
    assert set(cfg.val.sets) == {
        f"{n}{s}" for n in ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw") for s in ("", "_occluded")
    }
    assert cfg.val.sets.lfw.path == "/data/casia/lfw.bin"


def test_ms1mv2_recipe_spreads_512_over_four_processes() -> None:
    cfg = _compose("experiment=ms1mv2_ir100", "data.train.root=/d", "val.root=/d")
    assert cfg.backbone.name == "ir100"
    assert cfg.data.batch_size * cfg.trainer.devices == 512 and cfg.trainer.strategy == "ddp"


def test_the_real_data_augmentation_instantiates() -> None:
    cfg = _compose("data=recordio", "data.train.root=/nowhere")
    chain = instantiate(cfg.data.train.transform)
    assert [type(a).__name__ for a in chain.augmentations] == ["OccluderAugment", "AdaFaceAugment"]


def test_real_faces_dev_recipe_trains_on_the_shared_faces_with_strong_augmentation() -> None:
    cfg = _compose("experiment=real_faces_dev", "real_faces.root=/faces")
    assert cfg.data.train._target_ == "oaml.data.formats.image_folder.ImageFolderDataset"
    assert cfg.data.train.root == "/faces/train" and cfg.val.bin == "/faces/test/lfw_dev.bin"
    chain = instantiate(cfg.data.train.transform)
    kinds = [type(a).__name__ for a in chain.augmentations]
    # occluders first (their masks are then warped and cropped with the face), AdaFace's flip last
    assert kinds == ["OccluderAugment", "AlignmentJitter", "AdaFaceAugment"]
    assert chain.augmentations[1].prob == 0.5 and chain.augmentations[2].crop_prob == 0.5
    # 38 steps per epoch at batch 64: the schedule's milestones fall inside the run
    assert cfg.data.batch_size == 64 and max(cfg.optimizer.lr_scheduler.milestones) < cfg.trainer.max_epochs


def test_evaluate_config_composes_with_standard_sets() -> None:
    cfg = _compose("ckpt=/x.ckpt", "val=standard", "val.root=/data", name="evaluate")
    assert Path(cfg.val.sets.cplfw_occluded.pairs.path) == Path("/data/cplfw.bin")
