"""Speed and peak memory of QAConv forward+backward for each occlusion weighting mode.

Self-matching of a batch of B feature maps (default 128 x 512 x 7 x 7) in training mode, visibility from a
sigmoid with gradients, scored by the pairwise matching loss, as in training. Each configuration runs in a fresh
subprocess so that peak memory is its own:

- CPU: the peak of the bytes torch allocates during one step (forward and backward), summed from the
  profiler's allocation and free events (``profile_memory``): exact and repeatable, unlike the process's
  peak resident set, which varied by about 7% between runs (allocator caching, other threads);
- CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated after setup.

Baselines ``naive-product`` and ``naive-mask`` compute the same scores as ``product`` and ``mask`` by
materialising the ``[P, G, hw, hw]`` weight tensor, the form QAConv's weighting must avoid.

    .venv/bin/python benchmarks/qaconv.py                       # CPU, B=128, 512x7x7
    .venv/bin/python benchmarks/qaconv.py --device cuda --iters 20
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from oaml.losses import PairwiseMatchingLoss
from oaml.models.qaconv import QAConv

CONFIGS = ("none", "product", "mask", "pooled", "covisible", "naive-product", "naive-mask")


class NaiveWeightedQAConv(QAConv):
    """Weighted QAConv that builds the ``[P, G, r, s]`` weight tensor explicitly (benchmark baseline only)."""

    def _pooled_all_pairs(
        self, probe: Tensor, gallery: Tensor, probe_vis: Tensor | None, gallery_vis: Tensor | None
    ) -> Tensor:
        # probe [P, s, C], gallery [G, r, C] (already normalised), visibility [B, hw].
        score = torch.einsum("psc,grc->pgrs", probe, gallery)
        weight = gallery_vis[None, :, :, None] * probe_vis[:, None, None, :]
        score = weight * score if self.weighting == "product" else weight * score + (1 - weight) * -1.0
        return torch.stack((score.max(dim=2).values, score.max(dim=3).values), dim=2)


def build(config: str, channels: int, height: int, width: int) -> QAConv:
    if config.startswith("naive-"):
        return NaiveWeightedQAConv(channels, height, width, weighting=config.removeprefix("naive-"))
    return QAConv(channels, height, width, weighting=config)


def _cpu_peak_bytes(step) -> int:
    """Peak of torch's live CPU allocations during ``step()`` (allocations before it do not count)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def worker(args: argparse.Namespace) -> dict:
    """Run one configuration in this process and return its measurements."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    qaconv = build(args.worker, args.channels, args.height, args.width).to(device).train()
    loss_fn = PairwiseMatchingLoss()
    features = torch.randn(
        args.batch, args.channels, args.height, args.width, device=device, requires_grad=True
    )
    vis_logits = torch.randn(args.batch, 1, args.height, args.width, device=device, requires_grad=True)
    labels = torch.arange(args.batch, device=device) // 4

    def step(num: int) -> None:
        scores = qaconv(features[:num], None, torch.sigmoid(vis_logits[:num]))
        loss, _ = loss_fn(scores, labels[:num])
        loss.backward()
        features.grad = vis_logits.grad = None
        qaconv.zero_grad(set_to_none=True)

    step(4)  # one-time allocations (thread pools, lazy library state) before the memory baseline
    gc.collect()
    for _ in range(args.warmup):
        step(args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(args.iters):
        step(args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iters
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _cpu_peak_bytes(lambda: step(args.batch))
    return {
        "config": args.worker,
        "seconds": seconds,
        "pairs_per_s": args.batch**2 / seconds,
        "peak_bytes": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--height", type=int, default=7)
    parser.add_argument("--width", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3, help="timed forward+backward steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the peak memory is read after at least one untimed step)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")

    if args.worker:
        print(json.dumps(worker(args)))
        return

    method = (
        "torch.cuda.max_memory_allocated - allocated after setup"
        if args.device.startswith("cuda")
        else "peak of torch's live allocations in one step (profiler events), fresh subprocess per row"
    )
    print(
        f"QAConv forward+backward, self-matching B={args.batch}, {args.channels}x{args.height}x{args.width}, "
        f"device={args.device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"warmup={args.warmup}, iters={args.iters}\npeak memory: {method}\n"
    )
    passthrough = [
        f"--batch={args.batch}", f"--channels={args.channels}", f"--height={args.height}",
        f"--width={args.width}", f"--iters={args.iters}", f"--warmup={args.warmup}", f"--device={args.device}",
    ]  # fmt: skip
    results = []
    for config in args.configs:
        out = subprocess.run(
            [sys.executable, __file__, f"--worker={config}", *passthrough],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = next((r for r in results if r["config"] == "none"), None)
    print("| weighting | pairs/s | ms / step | peak memory (MiB) | memory vs none |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{r['peak_bytes'] / reference['peak_bytes']:.2f}x" if reference else "-"
        print(
            f"| {r['config']} | {r['pairs_per_s']:,.0f} | {1000 * r['seconds']:,.0f} | "
            f"{r['peak_bytes'] / 2**20:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
