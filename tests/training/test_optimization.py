"""Optimiser wiring: AdaFace's weight-decay split, a separate head learning rate, schedules that know the run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from oaml.train import train
from oaml.training.build import build_model
from oaml.training.module import split_weight_decay
from oaml.training.schedules import warmup_cosine


def test_batchnorm_parameters_get_no_weight_decay() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2)
    )
    decay, no_decay = split_weight_decay([net])
    assert {id(p) for p in no_decay} == {id(p) for m in (net[1], net[5]) for p in m.parameters()}
    assert {id(p) for p in decay} == {id(p) for m in (net[0], net[2], net[4]) for p in m.parameters()}


def test_head_lr_gives_margin_head_and_qaconv_their_own_groups(tiny_train_config) -> None:
    model = build_model(tiny_train_config("optimizer.head_lr=0.01"), num_classes=12, val_set_names=[])
    optimizer = model.configure_optimizers()["optimizer"]
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(model.margin_head.kernel)] == 0.01 and lrs[id(model.matcher.fc.weight)] == 0.01
    assert lrs[id(model.backbone.input_layer[0].weight)] == 0.1
    assert decays[id(model.backbone.input_layer[1].weight)] == 0.0  # BatchNorm
    assert decays[id(model.backbone.input_layer[0].weight)] == 5e-4
    # Every trainable parameter is optimised exactly once.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert (
        len(params) == len({id(p) for p in params}) == len([p for p in model.parameters() if p.requires_grad])
    )


def test_warmup_cosine_shape() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps=100, warmup_fraction=0.1, min_lr_ratio=0.01)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert min(lrs[10:]) >= 0.01 and lrs[99] < 0.02
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_cosine(optimizer, total_steps=10, warmup_fraction=1.0)


class _StepRecorder:
    """Every optimizer step of a run, seen right after it: Lightning steps with a closure (forward, backward,
    clipping run inside step), so only a post-hook sees this step's clipped gradients and the lr it used."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.grad_norms: list[float] = []

    def __call__(self, optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.grad_norms.append(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        )
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.fixture
def steps():
    recorder = _StepRecorder()
    handle = register_optimizer_step_post_hook(recorder)
    yield recorder
    handle.remove()


def test_adamw_schedule_gets_the_run_length_from_the_trainer(tiny_train_config, tmp_path, steps) -> None:
    train(tiny_train_config("optimizer=adamw", run_dir=tmp_path / "run"))
    # 3 steps, warmup round(0.05 * 3) = 0 steps, cosine to 1% of lr 1e-3: only total_steps=3 gives these.
    expected = [1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * k / 3))) for k in range(3)]
    assert steps.lrs == pytest.approx(expected)


def test_bf16_mixed_precision_trains_and_validates(tiny_train_config, tmp_path) -> None:
    # CPU autocast in bf16 through every branch and the scorer. (Lightning replaces 16-mixed by bf16-mixed on
    # CPU, so fp16 with its gradient scaler can only be checked on a GPU.)
    precision = "bf16-mixed"
    metrics = train(tiny_train_config(f"trainer.precision={precision}", run_dir=tmp_path / "run"))
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/synthetic/qaconv_acc"] <= 1.0


def test_gradient_clipping_by_config(tiny_train_config, tmp_path, steps) -> None:
    train(tiny_train_config(run_dir=tmp_path / "free"))
    assert max(steps.grad_norms) > 1.0  # without clipping the gradients are larger than the bound below
    steps.grad_norms.clear()
    train(tiny_train_config("trainer.gradient_clip_val=1.0", run_dir=tmp_path / "clipped"))
    assert len(steps.grad_norms) == 3 and max(steps.grad_norms) <= 1.0 + 1e-4
