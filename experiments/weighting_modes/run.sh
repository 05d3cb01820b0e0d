#!/usr/bin/env bash
# The four QAConv occlusion-weighting modes at twice the default run's budget (600 steps, ir_nano, synthetic
# faces), everything else at defaults. Results: multirun/weighting_modes/<job>/metrics.json; summary: summarize.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m oaml.train --multirun \
    occlusion.weighting=none,product,mask,pooled \
    trainer.max_epochs=24 'optimizer.lr_scheduler.milestones=[16,22]' trainer.check_val_every_n_epoch=8 \
    print_metrics=false callbacks.progress_bar=null trainer.enable_progress_bar=false \
    hydra.sweep.dir=multirun/weighting_modes
