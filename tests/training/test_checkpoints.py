"""last.ckpt always holds the latest state, also when the monitored metric stops improving."""

from __future__ import annotations

import torch

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


def test_resume_from_last_checkpoint_continues_the_step_count(tiny_train_config, tmp_path) -> None:
    first = tmp_path / "first"
    train(tiny_train_config("trainer.max_steps=2", run_dir=first))
    resumed = tmp_path / "resumed"
    train(
        tiny_train_config(
            "trainer.max_steps=3",
            "trainer.max_epochs=3",
            f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
            run_dir=resumed,
        )
    )
    last = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    # The first run's checkpoint is untouched.
    assert (
        torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
        == 2
    )
