#!/usr/bin/env bash
# The four QAConv occlusion-weighting modes at twice the default run's budget (600 steps, ir_nano, synthetic
# faces), everything else at defaults: the named occlusion sweep with the loss weight held at its default.
# Usage: run.sh [SWEEP_DIR] [more overrides, e.g. seed=7]. Results: SWEEP_DIR/<job>/metrics.json; table: see
# README.md (oaml.sweep_summary).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m oaml.train --multirun +sweep=occlusion loss.occlusion=0.1 \
    trainer.max_epochs=24 'optimizer.lr_scheduler.milestones=[16,22]' trainer.check_val_every_n_epoch=8 \
    print_metrics=false callbacks.progress_bar=null trainer.enable_progress_bar=false \
    hydra.sweep.dir="${1:-multirun/weighting_modes}" "${@:2}"
