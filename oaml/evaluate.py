"""Evaluation entry point: ``python -m oaml.evaluate ckpt=PATH`` (also ``oaml-evaluate``).

Runs the same pair scorer as validation during training on the configured verification sets, with the
same trainer options (devices, strategy), and writes ``metrics.json`` into its own fresh run directory.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from oaml.data.pipeline.datamodule import OAMLDataModule
from oaml.data.pipeline.val_sets import build_mask_val_sets, build_val_sets
from oaml.errors import report_user_errors
from oaml.paths import CONF_DIR
from oaml.training.build import inherit_val_protocol, model_from_checkpoint
from oaml.training.checkpoint import load_checkpoint
from oaml.training.launch_env import prepare_launch
from oaml.training.report import print_metrics_table, write_metrics_json
from oaml.training.run_dir import claim_run_dir


def evaluate(cfg: DictConfig) -> dict[str, float]:
    prepare_launch(cfg)  # before the Trainer and the run dir: which process is which rank
    run_dir = claim_run_dir(Path(HydraConfig.get().runtime.output_dir))
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = load_checkpoint(cfg.ckpt, trusted=cfg.trusted)
    with open_dict(cfg):  # the val sets are built for the input size the checkpoint was trained on
        cfg.backbone.input_size = checkpoint["oaml"]["backbone"]["input_size"]
        inherit_val_protocol(cfg.val, checkpoint)  # the occluded twins the run validated on
    datamodule = OAMLDataModule(
        val_sets=build_val_sets(cfg.val, seed=cfg.val.seed, image_size=cfg.backbone.input_size),
        mask_val_sets=build_mask_val_sets(cfg.val),
        val_batch_size=cfg.data.val_batch_size,
        num_workers=cfg.data.num_workers,
        channel_order=cfg.data.channel_order or checkpoint["oaml"].get("channel_order", "rgb"),
        seed=cfg.seed,
    )
    model = model_from_checkpoint(
        checkpoint,
        OmegaConf.to_container(cfg.val.fusion),
        datamodule.val_set_names,
        cfg.ckpt,
        cfg.trusted,
        mask_val_set_names=datamodule.mask_val_set_names,
        weighting=cfg.weighting,
        val_erasure=cfg.val.get("erase", "own"),
    )
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(run_dir))
    trainer.validate(model, datamodule=datamodule, verbose=False)

    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")}
    if trainer.is_global_zero:
        write_metrics_json(metrics, run_dir / "metrics.json")
        if cfg.print_metrics:
            print_metrics_table(metrics, title=f"Evaluation of {cfg.ckpt}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@report_user_errors  # bad config values and data files: one line, no traceback
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
