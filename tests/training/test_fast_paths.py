"""Speed options give the same results: channels_last, torch.compile of the backbone, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from oaml.errors import ConfigError, find_user_error
from oaml.training.build import build_model
from oaml.training.fast_paths import apply_fast_paths


def _batch() -> dict:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 112, 112, generator=gen)
    labels = torch.arange(4).repeat_interleave(2)
    visibility = (torch.rand(8, 1, 112, 112, generator=gen) > 0.3).float()
    return {"main": (images, labels, visibility)}


def _step(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one training step (dropout drawn from the same seed)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    loss = model.training_step(batch, 0)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _pair(tiny_train_config, *overrides: str):
    # No dropout: its random mask follows the memory layout, so NHWC draws differ (a legitimate difference).
    cfg = tiny_train_config("+backbone.dropout=0", *overrides)
    reference = build_model(cfg, num_classes=4, val_set_names=[])
    fast = build_model(cfg, num_classes=4, val_set_names=[])
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def _assert_same_step(reference, fast, check_grads: bool, rtol: float = 1e-4) -> None:
    batch = _batch()
    loss_ref, grads_ref = _step(reference, batch)
    loss_fast, grads_fast = _step(fast, batch)
    assert loss_fast == pytest.approx(loss_ref, rel=rtol)
    if not check_grads:
        return
    assert grads_fast.keys() == grads_ref.keys()
    # Absolute tolerance from the largest gradient: some gradients are 0 analytically (a BN bias followed by
    # another BN) and rounding noise numerically; a wrong layout or graph is off by O(1).
    scale = max(grad.abs().max().item() for grad in grads_ref.values())
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=10 * rtol, atol=10 * rtol * scale, msg=name)


def _check_fast_path(tiny_train_config, weighting: str, **options) -> None:
    """The whole loss, and the gradients without QAConv (its maxima route gradients by near-ties, which
    rounding can flip: a legitimate difference of a few per cent on some parameters)."""
    for overrides, check_grads in (
        ((f"occlusion.weighting={weighting}",), False),
        (("loss.qaconv=0",), True),
    ):
        reference, fast = _pair(tiny_train_config, *overrides)
        apply_fast_paths(fast.backbone, **options)
        _assert_same_step(reference, fast, check_grads)
        assert fast.state_dict().keys() == reference.state_dict().keys()  # checkpoints stay interchangeable


def test_channels_last_gives_the_same_step(tiny_train_config) -> None:
    _check_fast_path(tiny_train_config, "mask", channels_last=True)


def test_compiled_backbone_gives_the_same_step(tiny_train_config) -> None:
    # aot_eager traces forward and backward as inductor does, without generating code (seconds, not minutes);
    # benchmarks/train_step.py --compile measures inductor itself.
    _check_fast_path(tiny_train_config, "none", compile=True, compile_backend="aot_eager")


def test_bf16_autocast_step_is_close_to_float32(tiny_train_config) -> None:
    reference, fast = _pair(tiny_train_config)
    batch = _batch()
    loss_ref, _ = _step(reference, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16, grads = _step(fast, batch)
    assert loss_bf16 == pytest.approx(loss_ref, rel=0.05)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.compile=yes",), "model.compile must be true or false"),
        (("data.prefetch_factor=0",), "data.prefetch_factor must be an int >= 1"),
        (("data.num_workers=-1",), "data.num_workers must be an int >= 0"),
    ],
)
def test_bad_speed_options_name_their_key(tiny_train_config, tmp_path, overrides, message) -> None:
    from oaml.train import train

    with pytest.raises(Exception) as info:  # noqa: PT011 (Hydra's instantiate wraps the constructors' errors)
        train(tiny_train_config(*overrides, run_dir=tmp_path / "run"))
    error = find_user_error(info.value)
    assert isinstance(error, ConfigError) and message in str(error)
