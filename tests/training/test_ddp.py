"""Data-parallel runs on CPU (gloo) with real processes: the same numbers as one process, one run dir per run.

The entry points run as the CLI a user types, so Lightning's ``ddp`` launcher re-executes the command for
rank 1 exactly as it does on a GPU node (in-process tests would need ``ddp_spawn``, a different code path).
What is proven here:

- validation sharded over 2 ranks (whole pairs per rank, an uneven split, per-pair scores gathered) gives the
  metrics of a single process;
- training under DDP runs several optimizer steps without an unused-parameter error, both ranks share the one
  Hydra run dir, only rank 0 writes results, and the ranks draw different identities at every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from batch_records import read_labels
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy

from oaml.data.pipeline.pair_sharding import PairShardSampler

# Not imported from conftest at module level (as in batch_records): conftest resets torch's thread count.
REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
SETS = ("synthetic", "synthetic_occluded")
SCORES = ("adaface", "qaconv", "qaconv_novis", "fused")

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="torch was built without gloo")

# An odd number of pairs: rank 0 holds 20 and rank 1 holds 21. Three pairs per batch, so rank 1's batches
# start at pairs 20, 23, ... where a single process's start at 18, 21, ...: the batches differ too.
NUM_VAL_PAIRS = 41
VAL_BATCH_SIZE = 6
VAL_OVERRIDES = [
    f"val.sets.synthetic.num_pairs={NUM_VAL_PAIRS}",
    "val.sets.synthetic.num_identities=16",
    f"val.sets.synthetic_occluded.num_pairs={NUM_VAL_PAIRS}",
    "val.sets.synthetic_occluded.num_identities=16",
    f"data.val_batch_size={VAL_BATCH_SIZE}",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
]
# 24 identities over 2 ranks: 12 each, three batches of 4 identities x 4 images per rank, so the epoch ends
# at step 3, where the scheduled validation runs (with check_val_every_n_epoch=1; otherwise training validates
# the final weights after fit). Steps after the first give DDP the backward where unused parameters would fail.
TRAIN_STEPS = 3
TRAIN_OVERRIDES = [
    "data.train.num_identities=24",
    "data.train.images_per_identity=4",
    "data.batch_size=16",
    "data.num_instances=4",
    "trainer.max_epochs=1",
    f"trainer.max_steps={TRAIN_STEPS}",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
    *VAL_OVERRIDES,
]


def _run(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    # One thread per process in both runs: equal arithmetic, and 2 ranks do not oversubscribe 2 cores.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        ),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _assert_two_gloo_ranks(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output, "rank 1 never started"
    assert "distributed_backend=gloo" in output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 3 steps in one process; its last checkpoint."""
    from conftest import compose_train_config

    from oaml.train import train

    run_dir = tmp_path_factory.mktemp("train") / "run"
    train(compose_train_config(run_dir, ["print_metrics=false"]))
    return run_dir / "checkpoints" / "last.ckpt"


def test_trainer_ddp_cpu_composes_to_two_cpu_processes(tmp_path: Path) -> None:
    for config_name, extra in (("train", []), ("evaluate", ["ckpt=unused.ckpt"])):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=["trainer=ddp_cpu", *extra])
        assert cfg.trainer.accelerator == "cpu"
        assert cfg.trainer.devices == 2
        assert cfg.trainer.strategy == "ddp"
        # Inherited from trainer/default: our samplers shard by rank, Lightning must not wrap them.
        assert cfg.trainer.use_distributed_sampler is False
        assert cfg.trainer.precision == "32-true"
    GlobalHydra.instance().clear()

    trainer = instantiate(
        cfg.trainer, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path)
    )
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 2
    assert trainer.strategy.root_device == torch.device("cpu")


@pytest.fixture(scope="module")
def niqab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic niqab mask set of 30 faces (held out at val_fraction 0.5: 15, split 7 / 8 over 2 ranks)."""
    from oaml.data.synthetic.export import export_synthetic

    out = tmp_path_factory.mktemp("exported") / "data"
    export_synthetic(
        out, num_identities=3, images_per_identity=1, num_pairs=2, pair_identities=2, num_niqab=30
    )
    return out / "niqab"


def test_validation_on_two_processes_matches_one_process(
    checkpoint: Path, niqab_root: Path, tmp_path: Path
) -> None:
    shards = [len(PairShardSampler(NUM_VAL_PAIRS, num_replicas=2, rank=r)) // 2 for r in range(2)]
    assert shards == [20, 21], "the test needs ranks holding different pair counts"

    # With the niqab set's held-out faces as a mask set: single faces sharded unevenly, gathered by index.
    masks = ["masks=niqab", f"data.masks.root={niqab_root}", "data.masks.val_fraction=0.5"]
    args = [f"ckpt={checkpoint}", *VAL_OVERRIDES, *masks, "print_metrics=false"]
    single = _run("oaml.evaluate", *args, f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-4000:]
    double = _run("oaml.evaluate", *args, "trainer=ddp_cpu", f"hydra.run.dir={tmp_path / 'two'}")
    _assert_two_gloo_ranks(double)

    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert sorted(two) == sorted(one)
    # Each pair is scored on its own, so only float32 rounding may differ (none was seen on this machine
    # with one thread per process; one ulp of a threshold near 4.5 is 4.8e-7 when the thread counts differ).
    assert two == pytest.approx(one, rel=1e-6, abs=1e-6)

    for name in SETS:
        for score in SCORES:
            assert 0.0 <= one[f"val/{name}/{score}_acc"] <= 1.0
            assert 0.0 <= one[f"val/{name}/{score}_eer"] <= 1.0
        assert 0.0 <= one[f"val/{name}/visibility_clean"] <= 1.0
    assert 0.0 <= one["val/synthetic_occluded/occ_iou"] <= 1.0
    assert 0.0 <= one["val/niqab/occ_mse"] <= 1.0 and 0.0 <= one["val/niqab/visibility_occluded"] <= 1.0
    assert not any(k.startswith("val/niqab/") and k.endswith("_acc") for k in one)  # no pairs, no accuracy
    # The two sets are scored separately (different images, so different numbers).
    assert any(one[f"val/synthetic/{s}_acc"] != one[f"val/synthetic_occluded/{s}_acc"] for s in SCORES)


def test_ddp_training_shares_one_run_dir_and_ranks_draw_different_identities(tmp_path: Path) -> None:
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    # No hydra.run.dir: the default timestamped dir under ./outputs, which rank 1 must not re-create anew.
    result = _run(
        "oaml.train",
        *TRAIN_OVERRIDES,
        "trainer=ddp_cpu",
        "+callbacks.train_labels._target_=batch_records.RecordTrainLabels",
        f"+callbacks.train_labels.out_dir={labels_dir}",
        cwd=tmp_path,
    )
    _assert_two_gloo_ranks(result)
    output = (result.stdout + result.stderr).lower()
    assert "unused param" not in output and "finished reduction" not in output

    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1, f"expected one run dir, found {run_dirs}"
    run_dir = run_dirs[0]
    # Rank 1 ran in the same dir (Lightning passes it the resolved hydra.run.dir and its own job name).
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert "devices: 2" in (run_dir / ".hydra" / "config.yaml").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/loss_qaconv"] > 0.0
    assert 0.0 <= metrics["val/synthetic_occluded/fused_acc"] <= 1.0
    # Only rank 0 reports: the table is printed once, and one event file is written.
    assert result.stdout.count(f"Validation after {TRAIN_STEPS} steps") == 1
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == TRAIN_STEPS

    ranks = [read_labels(labels_dir, r) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    steps = [r["labels_by_step"] for r in ranks]
    assert sorted(steps[0]) == sorted(steps[1]) == list(range(TRAIN_STEPS))
    for step in range(TRAIN_STEPS):
        first, second = set(steps[0][step]), set(steps[1][step])
        # P x K on each rank: 4 identities with 4 images each, and no identity on both ranks at once.
        assert len(first) == len(second) == 4
        assert len(steps[0][step]) == len(steps[1][step]) == 16
        assert not first & second, f"step {step}: ranks drew the same identities {first & second}"
