#!/usr/bin/env bash
# The occlusion-awareness study: one run per (configuration, seed) into ROOT/<config>_s<seed>/ (default
# outputs/oa; a finished run is skipped, so the script can be re-run to fill gaps). Every run is `make train`'s
# default recipe (ir_nano, synthetic faces, 300 steps, validation on the same 600 + 600 held-out pairs,
# val.seed 0) with the overrides of its configuration; `real_*` configurations use experiment=real_faces_dev
# (LFW faces of ../shared/realfaces, validation on lfw_dev.bin and its occluded twin) for 20 epochs.
# Usage: run.sh TABLE [SEEDS...]     TABLE: head | matching | real      (default seeds: 42 1 7)
# Then:  python experiments/occlusion_awareness/table.py outputs/oa --configs ...   (see README.md)
set -euo pipefail
# (occlusion.weighting_start_step stays 0 and val.fusion at conf/val's default in every row)
cd "$(dirname "$0")/../.."
table=$1; shift
seeds=${*:-42 1 7}
root=${ROOT:-outputs/oa}
# Every configuration names all the keys the study varies, so that changing a default never changes a row.
final_head="occlusion.input_stage=-1 occlusion.hidden_channels=128 occlusion.layers=0"
spec_head="loss.occlusion_loss.kind=mse loss.occlusion=0.1 loss.occlusion_loss.hidden_weight=1.0 $final_head"
bce="loss.occlusion_loss.kind=bce loss.occlusion=1.0 loss.occlusion_loss.hidden_weight=1.0"
image_head="$bce occlusion.input_stage=image occlusion.hidden_channels=64 occlusion.layers=0"
real="experiment=real_faces_dev trainer.max_epochs=20 optimizer.lr_scheduler.milestones=[14,18]"
declare -A configs
case $table in
    head)  # what the OcclusionHead reads and how it is trained; QAConv trained without visibility throughout
        configs=(
            [A_base]="occlusion.weighting=none $spec_head"
            [B_bce1]="occlusion.weighting=none $bce $final_head"
            [G_bce5]="occlusion.weighting=none $bce loss.occlusion=5.0 $final_head"
            [C_st2l1_bce1]="occlusion.weighting=none $bce occlusion.input_stage=2 occlusion.layers=1 occlusion.hidden_channels=64"
            [D_st1l2_bce1]="occlusion.weighting=none $bce occlusion.input_stage=1 occlusion.layers=2 occlusion.hidden_channels=32"
            [F_st0l2_bce1]="occlusion.weighting=none $bce occlusion.input_stage=0 occlusion.layers=2 occlusion.hidden_channels=16"
            [I_img_bce1]="occlusion.weighting=none $image_head"
            [J_img_bce5]="occlusion.weighting=none $image_head loss.occlusion=5.0"
            [K_img_hw3]="occlusion.weighting=none $image_head loss.occlusion_loss.hidden_weight=3.0"
        ) ;;
    matching)  # the best head; QAConv trained and scored without (N) and with (V) co-visible weighting
        configs=(
            [N_img]="occlusion.weighting=none $image_head"
            [V_img]="occlusion.weighting=covisible $image_head"
        ) ;;
    real)
        configs=(
            [REAL_N_img]="occlusion.weighting=none $image_head $real"
            [REAL_V_img]="occlusion.weighting=covisible $image_head $real"
        ) ;;
    *) echo "unknown table $table (head | matching | real)" >&2; exit 2 ;;
esac
for seed in $seeds; do
    for name in "${!configs[@]}"; do
        dir="$root/${name}_s$seed"
        [ -e "$dir/metrics.json" ] && continue
        # shellcheck disable=SC2086
        .venv/bin/python -m oaml.train ${configs[$name]} seed="$seed" hydra.run.dir="$dir" print_metrics=false \
            callbacks.progress_bar=null trainer.enable_progress_bar=false
    done
done
