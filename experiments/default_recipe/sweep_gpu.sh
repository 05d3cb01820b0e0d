#!/usr/bin/env bash
# Recipe search for the default CPU run, executed on a lent GPU machine so that many candidate recipes run
# in the time one CPU run takes. Every candidate runs the real entry point with the same step budget the
# CPU run can afford; only the optimiser and data size differ. Results: summary.json under $OUT.
# Usage (device tool): bash experiments/default_recipe/sweep_gpu.sh
set -u
OUT=${OUT:-/tmp/sweep_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
COMMON="trainer.accelerator=gpu trainer.check_val_every_n_epoch=3 data.num_workers=3 print_metrics=false"
run() {  # name, overrides...
  local name=$1; shift
  python3 -m oaml.train $COMMON hydra.run.dir=/tmp/runs/$name "$@" > /tmp/runs_$name.log 2>&1 \
    || { echo "FAILED $name"; tail -20 /tmp/runs_$name.log; }
}
ADAMW="optimizer=adamw"
wave1() {
  run sgd_e12 trainer.max_epochs=12 "optimizer.lr_scheduler.milestones=[8,11]" &
  run adamw1e3_e12 trainer.max_epochs=12 $ADAMW &
  run adamw3e3_e12 trainer.max_epochs=12 $ADAMW optimizer.optimizer.lr=3e-3 &
  run adamw1e3_800id trainer.max_epochs=24 $ADAMW data.train.num_identities=800 data.train.images_per_identity=8 &
  wait
}
wave2() {
  run adamw2e3_e20 trainer.max_epochs=20 $ADAMW optimizer.optimizer.lr=2e-3 &
  run adamw2e3_b32 trainer.max_epochs=24 $ADAMW optimizer.optimizer.lr=2e-3 data.batch_size=32 &
  run sgd_lr003_e12 trainer.max_epochs=12 optimizer.optimizer.lr=0.03 "optimizer.lr_scheduler.milestones=[8,11]" &
  run adamw2e3_e8 trainer.max_epochs=8 $ADAMW optimizer.optimizer.lr=2e-3 &
  wait
}
time wave1
time wave2
python3 - "$OUT" <<'PY'
import glob, json, os, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
summary = {}
for run in sorted(glob.glob("/tmp/runs/*")):
    files = glob.glob(run + "/tensorboard/events*")
    if not files:
        continue
    ea = EventAccumulator(files[0]); ea.Reload()
    tags = [t for t in ea.Tags()["scalars"] if t.endswith(("_acc", "occ_iou")) and "/" in t and t.startswith("val/")]
    summary[os.path.basename(run)] = {
        t: [(e.step, round(e.value, 4)) for e in ea.Scalars(t)] for t in tags
    } | {"train/matching_acc_last": ea.Scalars("train/matching_acc")[-1].value}
json.dump(summary, open(sys.argv[1] + "/summary.json", "w"), indent=1)
for name, s in summary.items():
    print(name, {k.split("/", 1)[1]: v[-1] for k, v in s.items() if k.endswith(("adaface_acc", "/qaconv_acc"))})
PY
