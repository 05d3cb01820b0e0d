"""Speed options that leave the model's results unchanged: ``model.channels_last`` and ``model.compile``.

Both act on the backbone only, which holds nearly all of a step's convolution time; the heads, QAConv and
the losses are small or matrix products. Neither changes a parameter name, so checkpoints written with or
without them load into each other. Mixed precision is Lightning's own option, ``trainer.precision=bf16-mixed``
(or ``16-mixed`` on a GPU); the losses that need float32 (occlusion loss, visibility targets) leave autocast
themselves.

- ``channels_last``: the backbone's weights in NHWC memory order. Convolution kernels (cuDNN on a GPU with
  tensor cores, oneDNN on a CPU) pick the layout of the weight or the input, so every activation then flows
  in NHWC without converting the input batch. Same numbers to float rounding.
- ``compile``: ``torch.compile`` of the backbone in place (``nn.Module.compile``: the module keeps its class
  and its state-dict keys). The first steps pay the compilation (tens of seconds to minutes), and each new
  input shape or train/eval switch compiles once more. The training step calls the compiled forward except
  when QAConv runs without the OcclusionHead (``loss.occlusion=0`` with QAConv weighting ``none``), which
  takes the body's feature maps directly and runs eagerly.
"""

from __future__ import annotations

import torch
from torch import nn

from oaml.errors import ConfigError


def apply_fast_paths(
    backbone: nn.Module, channels_last: bool = False, compile: bool = False, compile_backend: str = "inductor"
) -> nn.Module:
    """Apply ``model.channels_last`` / ``model.compile`` to ``backbone`` in place and return it."""
    for key, value in (("model.channels_last", channels_last), ("model.compile", compile)):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    if compile:
        backbone.compile(backend=compile_backend)
    return backbone
