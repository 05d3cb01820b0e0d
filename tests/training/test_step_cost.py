"""What a training step computes and what it reads on the host.

- A loss whose weight is 0 is not computed, nor the modules only it needs (so ``loss.qaconv=0
  loss.occlusion=0`` is AdaFace's own step), and those modules are frozen for fit.
- The step reads no tensor value on the host (a host-device synchronisation on an accelerator) except in the
  input checks that run on CPU tensors only.
"""

from __future__ import annotations

import traceback

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from oaml.training.build import build_model

# Ops that hand a tensor's value (or a data-dependent shape) to the host.
_HOST_READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal"}
# The input checks that read values on CPU tensors only (see their docstrings).
_CPU_ONLY_CHECKS = {"_check_label_values", "_check_target_values"}


class HostReads(TorchDispatchMode):
    """Records every host read with the Python functions on the stack when it happened."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, set[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _HOST_READS:
            self.reads.append((name, {frame.name for frame in traceback.extract_stack()}))
        return func(*args, **(kwargs or {}))


def _batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, 112, 112, generator=gen)
    labels = torch.arange(4).repeat_interleave(2)
    visibility = (torch.rand(8, 1, 112, 112, generator=gen) > 0.3).float()
    masks = (torch.randn(4, 3, 112, 112, generator=gen), torch.zeros(4, 1, 112, 112))
    return {"main": (images, labels, visibility), "masks": masks}


def _calls(model) -> dict[str, int]:
    counts = {"matcher": 0, "occlusion_head": 0, "margin_head": 0}
    for name in counts:

        def hook(module, inputs, output, name=name):
            counts[name] += 1

        module = model.backbone.occlusion_head if name == "occlusion_head" else getattr(model, name)
        module.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("weighting", ["mask"])
def test_zero_weight_terms_are_not_computed(tiny_train_config, weighting) -> None:
    full = build_model(tiny_train_config(f"occlusion.weighting={weighting}"), num_classes=4, val_set_names=[])
    calls = _calls(full)
    full.training_step(_batch(), 0)
    assert calls == {"matcher": 1, "occlusion_head": 1, "margin_head": 1}

    cfg = tiny_train_config("loss.qaconv=0", "loss.occlusion=0", f"occlusion.weighting={weighting}")
    adaface_only = build_model(cfg, num_classes=4, val_set_names=[])
    adaface_only.load_state_dict(full.state_dict())
    calls = _calls(adaface_only)
    torch.manual_seed(1)  # the same dropout draws in both
    loss = adaface_only.training_step(_batch(), 0)
    assert calls == {"matcher": 0, "occlusion_head": 0, "margin_head": 1}
    # AdaFace's step alone: the main images through the backbone (no mask-stream faces), margin head, CE.
    reference = build_model(cfg, num_classes=4, val_set_names=[])
    reference.load_state_dict(full.state_dict())
    images, labels, _ = _batch()["main"]
    torch.manual_seed(1)
    embedding, norm = reference.backbone(images)
    expected = F.cross_entropy(reference.margin_head(embedding, norm, labels), labels)
    assert loss.item() == pytest.approx(cfg.loss.adaface * expected.item(), rel=1e-5)
    # Nothing to fuse without QAConv: the impostor statistics are left as loaded.
    assert adaface_only.score_norm.num_updates.item() == full.score_norm.num_updates.item()

    adaface_only.setup("fit")
    frozen = {n for n, p in adaface_only.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("matcher.", "backbone.occlusion_head.")) for n in frozen)
    assert {n.split(".")[0] for n in frozen} == {"matcher", "backbone"}


def test_qaconv_without_occlusion_loss_skips_the_head(tiny_train_config) -> None:
    cfg = tiny_train_config("loss.occlusion=0", "occlusion.weighting=none")
    model = build_model(cfg, num_classes=4, val_set_names=[])
    calls = _calls(model)
    model.training_step(_batch(), 0)
    assert calls == {"matcher": 1, "occlusion_head": 0, "margin_head": 1}
    model.setup("fit")
    assert not any(p.requires_grad for p in model.backbone.occlusion_head.parameters())
    assert all(p.requires_grad for p in model.matcher.parameters())


def test_all_weights_zero_is_refused(tiny_train_config) -> None:
    cfg = tiny_train_config("loss.adaface=0", "loss.qaconv=0", "loss.occlusion=0")
    model = build_model(cfg, num_classes=4, val_set_names=[])
    with pytest.raises(ValueError, match="every loss weight is 0"):
        model.setup("fit")


@pytest.mark.parametrize("weighting", ["pooled"])
def test_training_step_reads_no_value_on_the_host(tiny_train_config, weighting) -> None:
    model = build_model(
        tiny_train_config(f"occlusion.weighting={weighting}"), num_classes=4, val_set_names=[]
    )
    model.finite_check_every = 1000  # not a checking step (those read the loss, as Lightning's logging does)
    batch = _batch()
    with HostReads() as mode:
        loss = model.training_step(batch, 0)
        loss.backward()
    stray = [
        (op, sorted(frames & {"training_step", "update", "forward"}))
        for op, frames in mode.reads
        if not frames & _CPU_ONLY_CHECKS
    ]
    assert stray == []
    assert mode.reads  # the CPU-only checks did run (and were seen): the mode works

    model.finite_check_every = 1  # a checking step reads the loss once
    with HostReads() as mode:
        model.training_step(batch, 0)
    assert len([r for r in mode.reads if not r[1] & _CPU_ONLY_CHECKS]) == 1
