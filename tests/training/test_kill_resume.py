"""Exact resume after a hard kill: a training process SIGKILLed in mid-epoch (loader workers and all), then
resumed from its last.ckpt to the same end, writes the same metrics.json as an uninterrupted run, to the
last digit. Weights, batches, augmentation and dropout must all come back for that (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import LOOP_TINY, REPO, TINY_OVERRIDES

from oaml.data.synthetic.export import export_synthetic
from oaml.train import train

HERE = Path(__file__).resolve().parent

# 3 batches an epoch, 2 epochs, killed after step 5 (epoch 1, batch 1). With last.ckpt every 2 steps the resume
# starts from step 4, a checkpoint taken in mid-epoch; without, from step 3, the end of epoch 0. (Without loader
# workers, tests/training/test_checkpoints.py compares the metrics of a run stopped in mid-epoch and resumed.)
SCHEDULE = [
    "trainer.max_epochs=2",
    "trainer.max_steps=-1",
    "trainer.check_val_every_n_epoch=1",
    "print_metrics=false",
]
MID_EPOCH_CHECKPOINTS = "callbacks.last_checkpoint.every_n_train_steps=2"
KILL_AFTER_STEP = 5


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill_resume") / "data"
    export_synthetic(
        root, num_identities=12, images_per_identity=4, num_pairs=20, pair_identities=8, num_niqab=16, seed=5
    )
    return root


# Real files, pasted occluders and AdaFace augmentation on the main stream, the niqab mask stream (with its own
# flip and crop) cycled along it, and two loader workers that the kill takes down too.
def _files_and_masks(data: Path) -> list[str]:
    return [
        "data=image_folder",
        f"data.train.root={data / 'identities'}",
        "data.batch_size=16",
        "data.num_workers=2",
        "masks=niqab",
        f"data.masks.root={data / 'niqab'}",
        "data.mask_batch_size=4",
        f"val.pairs={data / 'pairs' / 'pairs.txt'}",
    ]


def _kill_mid_epoch(overrides: list[str], run_dir: Path, marker: Path) -> None:
    """Run the CLI in its own process group, wait until it has trained KILL_AFTER_STEP steps, SIGKILL it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(REPO), os.environ.get("PYTHONPATH")])),
        # the same thread count as this process: the killed run's steps must be bit-identical to ours
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    command = [
        sys.executable,
        "-m",
        "oaml.train",
        *(LOOP_TINY if any(o.startswith("data=") for o in overrides) else TINY_OVERRIDES),
        *overrides,
        f"hydra.run.dir={run_dir}",
        "+callbacks.pause._target_=kill_probe.PauseAtStep",
        f"+callbacks.pause.step={KILL_AFTER_STEP}",
        f"+callbacks.pause.marker={marker}",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(
                    f"the run ended before step {KILL_AFTER_STEP}:\n{process.stdout.read().decode()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no step {KILL_AFTER_STEP} within 240 s")
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader workers, no clean-up of any kind
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert marker.read_text() == "1 1"  # killed in mid-epoch


def _kill_and_resume(overrides: list[str], tmp_path: Path, tiny_train_config, checkpoint_step: int) -> dict:
    killed = tmp_path / "killed"
    _kill_mid_epoch(overrides, killed, tmp_path / "paused")
    assert not (killed / "metrics.json").exists()
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == checkpoint_step
    resumed = tmp_path / "resumed"
    train(tiny_train_config(*overrides, f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}", run_dir=resumed))
    return json.loads((resumed / "metrics.json").read_text())


def test_synthetic_run_killed_after_an_epoch_end_checkpoint_resumes_to_the_uninterrupted_metrics(
    tiny_train_config, tmp_path
) -> None:
    # Two loader workers, resumed from the end of epoch 0: the workers prefetch the next epoch's first batches
    # before Lightning's set_epoch, so the data module must set the epoch first (it once dealt epoch 0 again).
    overrides = [*SCHEDULE, "data.num_workers=2"]
    whole = tmp_path / "whole"
    train(tiny_train_config(*overrides, run_dir=whole))
    expected = json.loads((whole / "metrics.json").read_text())
    assert any(k.endswith("_acc") for k in expected) and any(k.startswith("train/") for k in expected)
    assert _kill_and_resume(overrides, tmp_path, tiny_train_config, 3) == expected  # to the last digit


def test_run_with_mask_stream_augmentation_and_workers_killed_in_mid_epoch_resumes_exactly(
    exported, tiny_train_config, tmp_path
) -> None:
    overrides = [*SCHEDULE, *_files_and_masks(exported), MID_EPOCH_CHECKPOINTS]
    whole = tmp_path / "whole"
    train(tiny_train_config(*overrides, run_dir=whole))
    expected = json.loads((whole / "metrics.json").read_text())
    assert _kill_and_resume(overrides, tmp_path, tiny_train_config, 4) == expected
