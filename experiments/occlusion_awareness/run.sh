#!/usr/bin/env bash
# The occlusion-awareness study: one run per (configuration, seed) into ROOT/<config>_s<seed>/ (default
# outputs/oa; a finished run is skipped, so the script can be re-run to fill gaps). Every run is `make train`'s
# default recipe (ir_nano, synthetic faces, 300 steps, validation on the same 600 + 600 held-out pairs,
# val.seed 0) with the overrides of its configuration; `real_*` configurations use experiment=real_faces_dev
# (LFW faces of ../shared/realfaces, validation on lfw_dev.bin and its occluded twin) for 20 epochs.
# Usage: run.sh TABLE [SEEDS...]     TABLE: head | matching | erase | real | recipe | recipe54 | sampling | optimiser | study   (default seeds: 42 1 7)
# Erasing runs (ET2*) are also scored with both faces of a pair erased where either is hidden (val.erase=pair):
# `python -m oaml.evaluate` of their last.ckpt into ROOT/<config>_pair_s<seed>/.
# Then:  python experiments/occlusion_awareness/table.py outputs/oa --configs ...   (see README.md)
set -euo pipefail
# (occlusion.weighting_start_step stays 0 and val.fusion at conf/val's default in every row)
cd "$(dirname "$0")/../.."
table=$1; shift
seeds=${*:-42 1 7}
root=${ROOT:-outputs/oa}
# Every configuration names all the keys the study varies, so that changing a default never changes a row.
no_erase="occlusion.erase=false val.erase=own"
final_head="occlusion.input_stage=-1 occlusion.hidden_channels=128 occlusion.layers=0 $no_erase"
spec_head="loss.occlusion_loss.kind=mse loss.occlusion=0.1 loss.occlusion_loss.hidden_weight=1.0 $final_head"
bce="loss.occlusion_loss.kind=bce loss.occlusion=1.0 loss.occlusion_loss.hidden_weight=1.0"
image_head="$bce occlusion.input_stage=image occlusion.hidden_channels=64 occlusion.layers=0 $no_erase"
# The deeper image head of table 4 (two more conv3x3 layers, width 128), and erasure before the body.
image_head2="$bce occlusion.input_stage=image occlusion.hidden_channels=128 occlusion.layers=2"
erase="occlusion.erase=true occlusion.erase_source=target"
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
    erase)  # table 4: the deeper head; the body reading the image with the hidden cells erased (ET2) or not (N2)
        configs=(
            [N2]="occlusion.weighting=none $image_head2 $no_erase"
            [ET2]="occlusion.weighting=none $image_head2 $erase val.erase=own"
        ) ;;
    real)
        configs=(
            [REAL_N2]="occlusion.weighting=none $image_head2 $no_erase $real"
            [REAL_ET2]="occlusion.weighting=none $image_head2 $erase val.erase=own $real"
            [REAL_N_img]="occlusion.weighting=none $image_head $real"
            [REAL_V_img]="occlusion.weighting=covisible $image_head $real"
        ) ;;
    recipe)  # the real_faces_dev recipe at 40 epochs (crop/photometric 0.5, AlignmentJitter 0.5, grey occluders), table 6
        colour="data.train.transform.augmentations.0.match_grayscale=false val.occluder_match_grayscale=false"
        r40="experiment=real_faces_dev trainer.max_epochs=40 optimizer.lr_scheduler.milestones=[26,35] loss.adaface=0.1"
        configs=(
            [REAL40_N2]="occlusion.weighting=none $image_head2 $no_erase $r40"
            [REAL40_ET2]="occlusion.weighting=none $image_head2 $erase val.erase=own $r40"
            [REAL40_N2_colour]="occlusion.weighting=none $image_head2 $no_erase $r40 $colour"
            [REAL40_N2_colour_nojitter]="occlusion.weighting=none $image_head2 $no_erase $r40 $colour data.train.transform.augmentations.1.prob=0.0"
        ) ;;
    recipe54)  # table 7: AdaFace's loss weight at 40 epochs, and 54 epochs (what 30 minutes alone on 2 cores allow)
        r40="experiment=real_faces_dev trainer.max_epochs=40 optimizer.lr_scheduler.milestones=[26,35]"
        r54="experiment=real_faces_dev trainer.max_epochs=54 optimizer.lr_scheduler.milestones=[36,47] model.channels_last=true"
        configs=(
            [REAL40_N2_ada1]="occlusion.weighting=none $image_head2 $no_erase $r40 loss.adaface=1.0"
            [REAL54_N2]="occlusion.weighting=none $image_head2 $no_erase $r54 loss.adaface=0.1"
        ) ;;
    sampling)  # table 8: batch composition on the long-tailed real faces (K images per identity; identity weighting)
        r40="experiment=real_faces_dev trainer.max_epochs=40 optimizer.lr_scheduler.milestones=[26,35] loss.adaface=0.1"
        configs=(
            [REAL40_N2_k2]="occlusion.weighting=none $image_head2 $no_erase $r40 data.num_instances=2 data.identity_weighting=0.0"
            [REAL40_N2_w1]="occlusion.weighting=none $image_head2 $no_erase $r40 data.num_instances=4 data.identity_weighting=1.0"
            [REAL40_N2_k8]="occlusion.weighting=none $image_head2 $no_erase $r40 data.num_instances=8 data.identity_weighting=0.0"
        ) ;;
    optimiser)  # table 10: a lower body lr (heads kept at 0.1) and AdamW (heads at 1e-2) for the 40-epoch real recipe
        r40="experiment=real_faces_dev trainer.max_epochs=40 loss.adaface=0.1"
        configs=(
            [REAL40_N2_lr03]="occlusion.weighting=none $image_head2 $no_erase $r40 optimizer.lr_scheduler.milestones=[26,35] optimizer.optimizer.lr=0.03 optimizer.head_lr=0.1"
            [REAL40_N2_adamwh]="occlusion.weighting=none $image_head2 $no_erase $r40 optimizer=adamw ~optimizer.lr_scheduler.milestones optimizer.head_lr=0.01"
        ) ;;
    study)  # table 9: the study budget (24 epochs = 600 steps, drops at 16 and 22) for table 4's N2 and ET2
        s24="trainer.max_epochs=24 optimizer.lr_scheduler.milestones=[16,22] trainer.check_val_every_n_epoch=24"
        configs=(
            [S24_N2]="occlusion.weighting=none $image_head2 $no_erase $s24"
            [S24_ET2]="occlusion.weighting=none $image_head2 $erase val.erase=own $s24"
        ) ;;
    *) echo "unknown table $table (head | matching | erase | real | recipe | recipe54 | sampling | optimiser | study)" >&2; exit 2 ;;
esac
for seed in $seeds; do
    for name in "${!configs[@]}"; do
        dir="$root/${name}_s$seed"
        [ -e "$dir/metrics.json" ] && continue
        # shellcheck disable=SC2086
        .venv/bin/python -m oaml.train ${configs[$name]} seed="$seed" hydra.run.dir="$dir" print_metrics=false \
            callbacks.progress_bar=null trainer.enable_progress_bar=false
    done
    for name in "${!configs[@]}"; do
        dir="$root/${name}_s$seed"
        pair_dir="$root/${name}_pair_s$seed"
        [[ $name == *ET2* && ! -e "$pair_dir/metrics.json" ]] || continue
        val=()
        [[ $name == REAL* ]] && val=(val.bin=../shared/realfaces/test/lfw_dev.bin val.cache_dir=outputs/val_cache)
        # the recipe's occluded twin has grey occluders; said explicitly for checkpoints older than their stored protocol
        [[ $name == REAL40_* && $name != *_colour* ]] && val+=(val.occluder_match_grayscale=true)
        .venv/bin/python -m oaml.evaluate "${val[@]}" ckpt="$dir/checkpoints/last.ckpt" val.erase=pair \
            hydra.run.dir="$pair_dir" print_metrics=false
    done
done
