"""Training entry point: ``python -m oaml.train [group=option ...] [key=value ...]`` (also ``oaml-train``).

Compose, instantiate, fit, report. The body is a plain function of the config (``train``) so tests can run
it in-process; everything a run produces goes into Hydra's fresh run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from oaml.data.pipeline.val_sets import build_mask_val_sets, build_val_sets, resolve_monitor
from oaml.errors import report_user_errors
from oaml.paths import CONF_DIR
from oaml.training.build import build_model, loss_weights_from_config
from oaml.training.fast_paths import apply_fast_paths
from oaml.training.launch_env import prepare_launch
from oaml.training.loggers import close_loggers, trainer_extras
from oaml.training.report import print_metrics_table, write_metrics_json
from oaml.training.requeue import requeued_run
from oaml.training.run_dir import claim_run_dir
from oaml.training.search import search_objective
from oaml.training.step_seed import StepSeed


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as ``cfg`` says; return the final validation metrics (also written to ``metrics.json``)."""
    loss_weights_from_config(cfg.loss)  # a negative weight fails now, not after the data is read
    prepare_launch(cfg)  # before the Trainer and the run dir: which process is which rank
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    requeue = requeued_run(run_dir)  # a requeued SLURM job: resume its own run, never rerun a finished one
    claim_run_dir(run_dir)
    if requeue.finished_metrics is not None:
        return requeue.finished_metrics
    pl.seed_everything(cfg.seed, workers=True)

    val_sets = build_val_sets(cfg.val, seed=cfg.val.seed, image_size=cfg.backbone.input_size)
    datamodule = instantiate(cfg.data, val_sets=val_sets, mask_val_sets=build_mask_val_sets(cfg.val))
    with open_dict(cfg):  # callbacks read ${val.monitor}
        cfg.val.monitor = resolve_monitor(
            cfg.val.get("monitor"), datamodule.val_set_names, datamodule.mask_val_set_names
        )
    model = build_model(
        cfg,
        num_classes=datamodule.num_classes,
        val_set_names=datamodule.val_set_names,
        mask_val_set_names=datamodule.mask_val_set_names,
        occlusion_supervised=datamodule.occlusion_supervised,
        main_visibility_known=datamodule.main_visibility_known,
    )
    apply_fast_paths(model.backbone, cfg.model.get("channels_last", False), cfg.model.get("compile", False))

    extras = trainer_extras(cfg)  # logger, callbacks, progress bar: as the config and the terminal say
    callbacks = extras.pop("callbacks")
    callbacks.append(StepSeed(cfg.seed))  # not optional: exact resume depends on it
    trainer: pl.Trainer = instantiate(
        cfg.trainer, **extras, callbacks=callbacks, default_root_dir=str(run_dir)
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=requeue.ckpt_path or cfg.ckpt_path)
    metrics = logged_metrics(trainer)
    if model.last_validated_step != trainer.global_step and datamodule.val_sets:
        # Training stopped between validations (max_steps mid-epoch, check_val_every_n_epoch): the reported
        # metrics must describe the final weights.
        trainer.validate(model, datamodule=datamodule, verbose=False)
        metrics.update(logged_metrics(trainer))
    close_loggers(trainer.loggers)
    metrics.update(datamodule.data_metrics())  # e.g. unreadable images skipped (data.on_bad_image=skip)
    metrics = dict(sorted(metrics.items()))
    if trainer.is_global_zero:
        write_metrics_json(metrics, run_dir / "metrics.json")
        if cfg.print_metrics:
            print_metrics_table(metrics, title=f"Validation after {trainer.global_step} steps: {run_dir}")
    return metrics


def logged_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The last logged validation and training values, as plain floats, sorted by name."""
    return {
        k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(("val/", "train/"))
    }


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@report_user_errors  # bad config values and data files: one line, no traceback
def main(cfg: DictConfig) -> Any:
    return search_objective(cfg, train(cfg))  # what a sweeper (Optuna) optimises


if __name__ == "__main__":
    main()
