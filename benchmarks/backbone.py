"""Backbone speed on CPU: forward+backward of one batch (embedding + occlusion map) per step.

python benchmarks/backbone.py [--names ir_nano ir18] [--batch 64] [--threads 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from oaml.models import build_backbone


def step_seconds(name: str, batch: int, steps: int, channels_last: bool) -> float:
    model = build_backbone(name).train()
    x = torch.randn(batch, 3, model.input_size, model.input_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 1):  # the first step warms up oneDNN
        start = time.perf_counter()
        embedding, norm, occlusion, _ = model(x, return_occlusion=True)
        (embedding.sum() + occlusion.mean()).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", nargs="+", default=["ir_nano"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| backbone | params (M) | batch | threads | layout | s/step (median) | images/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.names:
        params = build_backbone(name).num_backbone_parameters() / 1e6
        for channels_last in (False, True):
            seconds = step_seconds(name, args.batch, args.steps, channels_last)
            layout = "channels_last" if channels_last else "NCHW"
            print(
                f"| {name} | {params:.2f} | {args.batch} | {args.threads} | {layout} | {seconds:.3f} "
                f"| {args.batch / seconds:.0f} |"
            )


if __name__ == "__main__":
    main()
