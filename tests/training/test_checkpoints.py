"""last.ckpt always holds the latest state, also when the monitored metric stops improving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from batch_records import read_labels

from oaml.train import train


def test_last_checkpoint_follows_training_when_best_does_not(tiny_train_config, tmp_path) -> None:
    run_dir = tmp_path / "run"
    # Three one-step epochs, validated each epoch. With the monitor's mode flipped to "min" on an accuracy,
    # best.ckpt changes only when accuracy drops; last.ckpt must be written every epoch regardless.
    cfg = tiny_train_config(
        "trainer.max_epochs=3",
        "trainer.max_steps=-1",
        "trainer.limit_train_batches=1",
        "callbacks.model_checkpoint.mode=min",
        run_dir=run_dir,
    )
    train(cfg)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    # best.ckpt holds the validation with the lowest accuracy ("min"): its own recorded score says so.
    best_state = next(v for k, v in best["callbacks"].items() if "mode': 'min'" in k or "'mode': 'min'" in k)
    assert best_state["best_model_score"] is not None
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.parametrize(
    ("first_steps", "resumed_overrides", "expected_steps"),
    [
        # Stopped mid-epoch by max_steps (3 batches an epoch), resumed to 2 epochs: the rest of epoch 0 is
        # trained, then epoch 1 (a checkpoint saved after fit() returned skipped the rest of epoch 0).
        (2, ["trainer.max_steps=-1", "trainer.max_epochs=2"], 6),
        # Stopped exactly at an epoch end, resumed with max_steps set: no empty epoch (Lightning #19617, which
        # an end-of-epoch checkpoint would hit).
        (3, ["trainer.max_steps=100", "trainer.max_epochs=3"], 9),
    ],
)
def test_resume_from_last_checkpoint_trains_exactly_the_remaining_steps(
    tiny_train_config, tmp_path, first_steps, resumed_overrides, expected_steps
) -> None:
    first = tmp_path / "first"
    train(tiny_train_config(f"trainer.max_steps={first_steps}", "print_metrics=false", run_dir=first))
    resumed = tmp_path / "resumed"
    train(
        tiny_train_config(
            *resumed_overrides,
            "print_metrics=false",
            f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
            run_dir=resumed,
        )
    )
    last = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == expected_steps
    assert last["epoch"] == expected_steps // 3 - 1  # the epoch its final step belongs to
    # The first run's checkpoint is untouched.
    assert (
        torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        == first_steps
    )


def _recorded(out_dir: Path) -> list[str]:
    return [
        "+callbacks.labels._target_=batch_records.RecordTrainLabels",
        f"+callbacks.labels.out_dir={out_dir}",
    ]


def test_each_epoch_draws_new_batches_and_a_resume_replays_none(tiny_train_config, tmp_path) -> None:
    two_epochs = ["trainer.max_epochs=2", "trainer.max_steps=-1", "print_metrics=false"]
    train(tiny_train_config(*two_epochs, *_recorded(tmp_path / "full_labels"), run_dir=tmp_path / "full"))
    full = read_labels(tmp_path / "full_labels")
    positions = [tuple(full["position_by_step"][step]) for step in range(6)]
    assert positions == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    labels = [full["labels_by_step"][step] for step in range(6)]
    # A new epoch, a new draw (the batch sampler must receive Lightning's set_epoch).
    assert labels[:3] != labels[3:]

    # Interrupted after 2 steps, resumed to the same end: the same batches, in the same order, none repeated.
    train(tiny_train_config("trainer.max_steps=2", *_recorded(tmp_path / "a_labels"), run_dir=tmp_path / "a"))
    train(
        tiny_train_config(
            *two_epochs,
            f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}",
            *_recorded(tmp_path / "b_labels"),
            run_dir=tmp_path / "b",
        )
    )
    first, second = read_labels(tmp_path / "a_labels"), read_labels(tmp_path / "b_labels")
    assert sorted(first["labels_by_step"]) == [0, 1] and sorted(second["labels_by_step"]) == [2, 3, 4, 5]
    for key in ("labels_by_step", "position_by_step"):
        assert {**first[key], **second[key]} == full[key]
    # And the same weights: the final metrics (validation and last training losses) to the last digit.
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "full" / "metrics.json").read_text()
    )


def test_last_checkpoint_is_due_after_every_nth_epoch_and_at_the_final_step() -> None:
    from types import SimpleNamespace

    from oaml.training.last_checkpoint import LastCheckpoint

    callback = LastCheckpoint("unused", every_n_epochs=2)

    def due(epoch: int, batch_idx: int, step: int, max_epochs: int = 3, max_steps: int = -1) -> bool:
        trainer = SimpleNamespace(  # the four counters the rule reads
            max_steps=max_steps,
            global_step=step,
            num_training_batches=4,
            current_epoch=epoch,
            max_epochs=max_epochs,
        )
        return callback._due(trainer, batch_idx)

    # 3 epochs of 4 batches: after epoch 2 (every 2nd) and after the last batch of the last epoch only.
    saved = [(e, b) for e in range(3) for b in range(4) if due(e, b, step=4 * e + b + 1)]
    assert saved == [(1, 3), (2, 3)]
    # A max_steps stop in mid-epoch is the final step.
    assert due(0, 1, step=2, max_steps=2) and not due(0, 1, step=2, max_steps=3)
    with pytest.raises(ValueError, match="every_n_epochs"):
        LastCheckpoint("unused", every_n_epochs=0)

    # every_n_train_steps adds mid-epoch checkpoints (steps 2, 4, 6, ...) to the epoch-end ones.
    callback = LastCheckpoint("unused", every_n_epochs=2, every_n_train_steps=2)
    saved = [(e, b) for e in range(3) for b in range(4) if due(e, b, step=4 * e + b + 1)]
    assert saved == [(0, 1), (0, 3), (1, 1), (1, 3), (2, 1), (2, 3)]
    with pytest.raises(ValueError, match="every_n_train_steps"):
        LastCheckpoint("unused", every_n_train_steps=0)
