"""The speed options side by side: an OAML training step plain, with ``model.channels_last``, with
``model.compile`` (torch.compile of the backbone, inductor) and under bf16 autocast (``trainer.precision=
bf16-mixed``), each on its own copy of the same model, taking turns step by step (medians).

The first step of the compiled copy includes the compilation; it is reported on its own and left out of the
median (``--warmup`` steps of every copy are untimed). Results are the same to float rounding
(tests/training/test_fast_paths.py); this script measures only speed.

    python benchmarks/fast_paths.py --backbone ir_nano --batch 32
    python benchmarks/fast_paths.py --backbone ir50 --batch 256 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from common import compose_config, interleaved_medians, machine_line, synchronize
from train_step import Stepper, make_batch

from oaml.training.build import build_model
from oaml.training.fast_paths import apply_fast_paths

OPTIONS = ("plain", "channels_last", "compile", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="ir_nano")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    # Options combine with "+", e.g. bf16+channels_last.
    parser.add_argument("--options", nargs="+", default=list(OPTIONS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = build_model(compose_config([f"backbone={args.backbone}"]), num_classes=10575, val_set_names=[])
    base = base.to(device).train()
    batch = make_batch(args.batch, 0, device)
    cases, first_step = {}, {}
    for option in args.options:
        parts = set(option.split("+"))
        unknown = parts - set(OPTIONS)
        if unknown:
            parser.error(f"unknown option(s) {sorted(unknown)} in {option!r}")
        model = copy.deepcopy(base)
        apply_fast_paths(model.backbone, channels_last="channels_last" in parts, compile="compile" in parts)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        step = Stepper(model, batch, optimizer, torch.bfloat16 if "bf16" in parts else None, None)
        synchronize(device)
        start = time.perf_counter()
        step()  # the compiled copy compiles here
        synchronize(device)
        first_step[option] = time.perf_counter() - start
        cases[option] = step
    seconds = interleaved_medians(cases, device, args.steps, args.warmup)
    print(machine_line(device))
    print(
        f"# OAML training step, {args.backbone}, batch {args.batch}, median of {args.steps} after {args.warmup}"
    )
    print("| option | first step (s) | ms / step | images/s | speed vs plain |")
    print("|---|---:|---:|---:|---:|")
    for option in args.options:
        ratio = seconds["plain"] / seconds[option] if "plain" in seconds else float("nan")
        print(
            f"| {option} | {first_step[option]:.1f} | {1e3 * seconds[option]:,.1f} | "
            f"{args.batch / seconds[option]:,.1f} | {ratio:.2f}x |"
        )
    print(f"{machine_line(device)} (at the end)")


if __name__ == "__main__":
    main()
