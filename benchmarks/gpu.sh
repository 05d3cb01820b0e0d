#!/usr/bin/env bash
# One GPU run of OAML's benchmarks and the GPU training check, at most about 8 minutes on one H200.
#
#   bash benchmarks/gpu.sh prepare     # here, once: the wheels the GPU image lacks, into .whl/ (git-ignored)
#   bash benchmarks/gpu.sh             # on the GPU machine, from the repo root, with .whl/ carried along
#
# The GPU image brings torch, lightning, torchmetrics, tensorboard, rich, pillow and numpy; OAML adds
# hydra-core, omegaconf and antlr4 (pure Python), installed from .whl/ into /tmp/site, and runs from the
# source tree (PYTHONPATH). Steps, each with its own time limit so that one slow step cannot eat the others:
#   1. train step, IR-50, batch 256 (+64 mask-stream faces), bf16 then fp16 (16-mixed): OAML vs AdaFace-only
#      per image, the parts, images/s, peak memory; the bf16 run also checks that the step makes no
#      host-device synchronisation (torch.cuda.set_sync_debug_mode("error"));
#   2. the same in bf16 with channels_last;
#   3. QAConv memory and speed of each weighting mode (B=128, 512x7x7);
#   4. evaluation of an LFW-sized .bin (6,000 pairs) with IR-50: start-up, decode, embedding, QAConv, metrics,
#      and python -m oaml.evaluate cold and warm;
#   5. python -m oaml.train trainer.accelerator=gpu trainer.precision=16-mixed (the default run), timed.
# Everything printed also goes to $OUT/gpu_log.txt when OUT is set (the device tool's result folder).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "prepare" ]]; then
    mkdir -p .git/info && (grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude)
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
    python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as an sdist only
    ls -la .whl
    exit 0
fi

LOG="${OUT:-/tmp}/gpu_log.txt"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
START=$SECONDS
step() {  # step LIMIT_SECONDS TITLE COMMAND...
    local limit=$1 title=$2
    shift 2
    echo
    echo "=== $title (limit ${limit}s, at $((SECONDS - START))s) ==="
    local begin=$SECONDS
    timeout "$limit" "$@"
    echo "=== exit $? after $((SECONDS - begin))s ==="
}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__, 'cuda', torch.cuda.is_available())"
nproc; uptime

step 100 "train step, IR-50, batch 256, bf16" \
    python3 benchmarks/train_step.py --backbones ir50 --batch 256 --mask-batch 64 --device cuda --precision bf16 \
    --steps 10 --warmup 3 --check-sync
step 80 "train step, IR-50, batch 256, fp16 (16-mixed, gradient scaler)" \
    python3 benchmarks/train_step.py --backbones ir50 --batch 256 --device cuda --precision 16 --steps 10 --warmup 3
step 80 "train step, IR-50, batch 256, bf16, channels_last" \
    python3 benchmarks/train_step.py --backbones ir50 --batch 256 --device cuda --precision bf16 --steps 10 \
    --warmup 3 --channels-last
step 40 "QAConv weighting modes, B=128" python3 benchmarks/qaconv.py --device cuda --iters 20
step 120 "evaluation, LFW-sized .bin, IR-50" \
    python3 benchmarks/evaluate.py --backbone ir50 --device cuda --batch 512 --workers 8 --workdir /tmp/oaml-eval
TRAIN_DIR=/tmp/oaml-gpu-train
step 120 "python -m oaml.train trainer.accelerator=gpu trainer.precision=16-mixed" \
    python3 -m oaml.train trainer.accelerator=gpu trainer.precision=16-mixed data.num_workers=8 \
    trainer.enable_progress_bar=false "hydra.run.dir=$TRAIN_DIR"
if [[ -f "$TRAIN_DIR/metrics.json" ]]; then
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: round(v, 4) for k, v in m.items() if k.endswith(('fused_acc', 'occ_iou')) or k == 'train/loss'})" "$TRAIN_DIR/metrics.json"
fi
echo
echo "total $((SECONDS - START))s"
