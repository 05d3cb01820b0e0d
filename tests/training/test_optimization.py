"""Optimiser wiring: AdaFace's weight-decay split, a separate head learning rate, schedules that know the run."""

from __future__ import annotations

import math
from unittest.mock import patch

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from oaml.errors import ConfigError
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
    # CPU autocast in bf16 through every branch and the scorer.
    precision = "bf16-mixed"
    metrics = train(tiny_train_config(f"trainer.precision={precision}", run_dir=tmp_path / "run"))
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/synthetic/qaconv_acc"] <= 1.0


class _Fp16Probe(Callback):
    """What the fp16 run really did: the dtype the backbone computed in, and the gradient scaler's scale."""

    def __init__(self) -> None:
        self.embedding_dtypes: set[torch.dtype] = set()
        self.scales: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.backbone.output_layer.register_forward_hook(
            lambda module, args, out: self.embedding_dtypes.add(out.dtype)
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.scales.append(trainer.precision_plugin.scaler.get_scale())


# Lightning swaps `precision=16-mixed` for bf16-mixed on CPU; its fp16 plugin, given explicitly, runs fp16
# autocast with a gradient scaler on CPU too: the code path a GPU's 16-mixed takes (scale, unscale before
# clipping, skip steps with inf gradients, scaler state in checkpoints).
FP16_ON_CPU = [
    "trainer.precision=null",
    "+trainer.plugins=[{_target_: lightning.pytorch.plugins.MixedPrecision, precision: 16-mixed, device: cpu}]",
]


def test_fp16_mixed_precision_with_gradient_scaler_trains_clips_and_resumes(
    tiny_train_config, tmp_path
) -> None:
    probe = _Fp16Probe()
    cfg = tiny_train_config(
        # Stop mid-epoch (3 batches an epoch): Lightning 2.6 resumes a max_steps run that stopped exactly at an
        # epoch end with one empty epoch (Lightning issue #19617).
        *FP16_ON_CPU,
        "trainer.gradient_clip_val=1.0",
        "trainer.max_steps=2",
        run_dir=tmp_path / "run",
    )
    with patch("oaml.train.instantiate", _adding_callback(probe)):
        metrics = train(cfg)
    assert probe.embedding_dtypes == {torch.float16}
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/synthetic/qaconv_acc"] <= 1.0
    # The scaler started at 2**16 and can only have halved (on an inf gradient) or stayed: a power of two.
    assert probe.scales[0] == 2.0**16 and all(math.log2(s).is_integer() for s in probe.scales)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    saved_scale = checkpoint["MixedPrecision"]["scale"]
    assert saved_scale == min(probe.scales[-1], saved_scale)  # halves once more at most, never grows here
    # Master weights stay fp32 under autocast.
    assert all(v.dtype == torch.float32 for k, v in checkpoint["state_dict"].items() if v.is_floating_point())

    resumed_probe = _Fp16Probe()
    resumed = tiny_train_config(
        *FP16_ON_CPU,
        "trainer.max_epochs=2",
        "trainer.max_steps=4",
        # fp16 convolutions are slow on CPU: the resume only has to show the scaler's state, not validate again
        "trainer.limit_val_batches=0",
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
        run_dir=tmp_path / "resumed",
    )
    with patch("oaml.train.instantiate", _adding_callback(resumed_probe)):
        train(resumed)
    assert len(resumed_probe.scales) == 2 and resumed_probe.scales[0] == saved_scale


def _adding_callback(callback: Callback):
    """`instantiate` as train() uses it, with ``callback`` appended to the Trainer's callbacks."""

    def instantiate_with(config, *args, **kwargs):
        if kwargs.get("callbacks") is not None:
            kwargs["callbacks"] = [*kwargs["callbacks"], callback]
        return instantiate(config, *args, **kwargs)

    return instantiate_with


def test_gradient_clipping_by_config(tiny_train_config, tmp_path, steps) -> None:
    train(tiny_train_config(run_dir=tmp_path / "free"))
    assert max(steps.grad_norms) > 1.0  # without clipping the gradients are larger than the bound below
    steps.grad_norms.clear()
    train(tiny_train_config("trainer.gradient_clip_val=1.0", run_dir=tmp_path / "clipped"))
    assert len(steps.grad_norms) == 3 and max(steps.grad_norms) <= 1.0 + 1e-4


def test_a_key_its_optimizer_or_scheduler_does_not_take_is_refused_by_name(tiny_train_config) -> None:
    # The real-face experiment sets SGD milestones; swapping in AdamW's warmup-cosine keeps them. The error
    # must name the key and the override that drops it, before any training starts.
    cfg = tiny_train_config("optimizer=adamw", "+optimizer.lr_scheduler.milestones=[26,35]")
    with pytest.raises(
        ConfigError, match=r"optimizer\.lr_scheduler\.milestones.*~optimizer\.lr_scheduler\.milestones"
    ):
        build_model(cfg, num_classes=12, val_set_names=[])
    # The same for the optimizer itself: SGD's momentum left on AdamW.
    cfg = tiny_train_config("optimizer=adamw", "+optimizer.optimizer.momentum=0.9")
    with pytest.raises(ConfigError, match=r"optimizer\.optimizer\.momentum.*~optimizer\.optimizer\.momentum"):
        build_model(cfg, num_classes=12, val_set_names=[])
    # Dropped as the message says, the same config builds and its schedule follows warmup-cosine.
    model = build_model(tiny_train_config("optimizer=adamw"), num_classes=12, val_set_names=[])
    assert model.scheduler_factory.func is warmup_cosine
