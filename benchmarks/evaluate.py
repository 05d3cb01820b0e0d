"""Wall time of ``python -m oaml.evaluate`` on an LFW-sized ``.bin``, and where it goes.

Writes (once, kept in ``--workdir``) a synthetic InsightFace ``.bin`` of ``--pairs`` pairs (LFW: 6,000 pairs,
12,000 112x112 JPEGs of rendered faces, half of the pairs genuine) and a checkpoint of a freshly initialised
``--backbone`` model, then measures:

1. start-up, in a fresh process: imports of ``oaml.evaluate``, the Hydra config, the checkpoint load and the
   model rebuild (goal <= 5 s);
2. decode: building the decoded uint8 cache of the ``.bin`` (first evaluation) and opening it again (every
   later one);
3. embedding: every image and its mirror through the backbone, through the evaluation's DataLoader, as
   validation does (``embed_faces``);
4. QAConv pair scoring of all pairs for each weighting mode (goal <= 0.5x the embedding time), plus the
   ``qaconv_novis`` score that every evaluation adds;
5. metrics: 10-fold accuracy, TAR@FAR and EER of the four scores;
6. the real command twice, cold (cache removed) and warm, wall time each; the warm run must leave the cache
   file untouched (it reuses it). ``val.bin=FILE`` evaluates the file and its occluded twin, so the command
   embeds twice the images of step 3 (the twin's occluders drawn on the fly).

    python benchmarks/evaluate.py                         # CPU, ir_nano, 6,000 pairs
    python benchmarks/evaluate.py --backbone ir50 --device cuda --batch 512
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import compose_config, load_average, machine_line, synchronize
from PIL import Image
from torch.utils.data import DataLoader

from oaml.data.formats.verification import BinVerificationDataset
from oaml.data.pipeline.normalize import normalize_faces
from oaml.data.synthetic.datasets import SyntheticFaces
from oaml.evaluation.metrics import verification_report
from oaml.evaluation.scoring import embed_faces, split_pairs
from oaml.models.qaconv import WEIGHTINGS
from oaml.training.build import build_model, model_from_checkpoint
from oaml.training.checkpoint import load_checkpoint

STARTUP_PROBE = """
import time
start = time.perf_counter()
import oaml.evaluate  # noqa: F401  (everything the entry point imports)
from oaml.training.build import model_from_checkpoint
from oaml.training.checkpoint import load_checkpoint
imported = time.perf_counter()
from hydra import compose, initialize_config_dir
import oaml.paths
with initialize_config_dir(config_dir=str(oaml.paths.CONF_DIR), version_base="1.3"):
    cfg = compose(config_name="evaluate", overrides=["ckpt={ckpt}"])
composed = time.perf_counter()
checkpoint = load_checkpoint(cfg.ckpt)
model_from_checkpoint(checkpoint, {{"adaface": 0.5, "qaconv": 0.5}}, ["lfw"], cfg.ckpt)
loaded = time.perf_counter()
print(imported - start, composed - imported, loaded - composed)
"""


def write_bin(path: Path, pairs: int, unique: int) -> None:
    """A synthetic LFW-sized ``.bin``: ``unique`` rendered faces, reused cyclically, JPEG quality 95."""
    faces = SyntheticFaces(max(1, unique // 10), 10, seed=0)
    encoded = []
    for index in range(min(unique, len(faces))):
        buffer = io.BytesIO()
        Image.fromarray(faces[index][0].permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    issame = [bool(i % 2 == 0) for i in range(pairs)]
    images = []
    for i, same in enumerate(issame):  # genuine pairs: two images of one identity; impostors: two identities
        first = (2 * i) % len(encoded)
        second = first + 1 if same else (first + 10) % len(encoded)
        images += [encoded[first], encoded[second % len(encoded)]]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump((images, issame), handle, protocol=4)
    os.replace(tmp, path)


def write_checkpoint(path: Path, backbone: str) -> None:
    """What a training run's checkpoint holds for evaluation: the state dict and the model description."""
    cfg = compose_config([f"backbone={backbone}"])
    model = build_model(cfg, num_classes=1000, val_set_names=[])
    torch.save({"state_dict": model.state_dict(), "oaml": model.checkpoint_info}, path)


def median_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="ir_nano")
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--unique", type=int, default=1000, help="distinct faces rendered for the .bin")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/oaml-bench-evaluate"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128, help="data.val_batch_size")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the short phases (median)")
    parser.add_argument("--skip-command", action="store_true", help="leave out step 6 (the real command)")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    bin_path = args.workdir / f"lfw_{args.pairs}.bin"
    ckpt = args.workdir / f"{args.backbone}.ckpt"
    if not bin_path.is_file():
        write_bin(bin_path, args.pairs, args.unique)
    if not ckpt.is_file():
        write_checkpoint(ckpt, args.backbone)
    print(machine_line(device))
    print(
        f"# {bin_path} ({args.pairs} pairs, {bin_path.stat().st_size / 2**20:.0f} MiB), {args.backbone}, "
        f"batch {args.batch}, {args.workers} loader workers"
    )
    rows: list[tuple[str, float, str]] = []

    # 1. start-up in a fresh process
    probe = STARTUP_PROBE.format(ckpt=ckpt)
    runs = [
        subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
        for _ in range(args.repeats)
    ]
    parts = np.median([[float(x) for x in r.stdout.split()[-3:]] for r in runs], axis=0)
    for name, value in zip(("start-up: imports", "start-up: config", "start-up: checkpoint + model"), parts):
        rows.append((name, value, ""))
    rows.append(("start-up total (goal <= 5 s)", float(parts.sum()), ""))

    # 2. decode: cold (no cache) and warm (cache reused)
    cache_dir = args.workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    dataset = BinVerificationDataset(bin_path, cache_dir=cache_dir)
    rows.append(("decode .bin -> cache (first evaluation)", time.perf_counter() - start, ""))
    rows.append(
        (
            "open cached .bin (later evaluations)",
            median_of(lambda: BinVerificationDataset(bin_path, cache_dir=cache_dir), args.repeats),
            "",
        )
    )

    # 3. embedding with flip, through the evaluation's DataLoader
    model = model_from_checkpoint(load_checkpoint(ckpt), {"adaface": 0.5, "qaconv": 0.5}, ["lfw"], ckpt)
    model = model.to(device).eval()
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    features = []
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for images, _ in loader:
            batch = embed_faces(model.backbone, normalize_faces(images.to(device, non_blocking=True)))
            features.append(batch)
    synchronize(device)
    embed_seconds = time.perf_counter() - start
    rows.append((f"embedding {len(dataset)} images + mirrors", embed_seconds, "1.00x"))
    first, second = split_pairs(
        type(features[0])(
            *(
                torch.cat([getattr(f, k) for f in features])
                for k in ("embedding", "feature_maps", "visibility")
            )
        )
    )

    # 4. QAConv pair scoring, each weighting mode, in validation-sized blocks
    half = args.batch // 2

    def score(use_visibility: bool) -> None:
        with torch.inference_mode():
            for i in range(0, len(first.embedding), half):
                sl = slice(i, i + half)
                vis = (first.visibility[sl], second.visibility[sl]) if use_visibility else (None, None)
                model.matcher.pair_scores(first.feature_maps[sl], second.feature_maps[sl], *vis)
        synchronize(device)

    for weighting in WEIGHTINGS:
        model.matcher.weighting = weighting
        seconds = median_of(lambda: score(True), args.repeats)
        rows.append(
            (
                f"QAConv pair scores, {weighting} (goal <= 0.5x embedding)",
                seconds,
                f"{seconds / embed_seconds:.3f}x",
            )
        )
    seconds = median_of(lambda: score(False), args.repeats)
    rows.append(
        ("QAConv pair scores without visibility (qaconv_novis)", seconds, f"{seconds / embed_seconds:.3f}x")
    )

    # 5. metrics of the four scores
    scores = np.random.default_rng(0).normal(size=(4, args.pairs))
    issame = dataset.issame
    rows.append(
        (
            "metrics, 4 scores",
            median_of(lambda: [verification_report(s, issame) for s in scores], args.repeats),
            "",
        )
    )

    print(f"# load average before step 6: {load_average()}")
    print("| phase | seconds | vs embedding |")
    print("|---|---:|---:|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.2f} | {ratio} |")

    # 6. the real command, cold then warm
    if args.skip_command:
        return
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    command = [
        sys.executable,
        "-m",
        "oaml.evaluate",
        f"ckpt={ckpt}",
        f"val.bin={bin_path}",
        f"val.cache_dir={cache_dir}",
        f"data.val_batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"trainer.accelerator={accelerator}",
        "print_metrics=false",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={args.workdir}/runs/${{now:%H-%M-%S-%f}}",
    ]
    shutil.rmtree(cache_dir, ignore_errors=True)
    print("| python -m oaml.evaluate (lfw + lfw_occluded) | wall s | cache |")
    print("|---|---:|---|")
    stamp = None
    for label in ("cold: decodes the .bin", "warm: second evaluation"):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        cache_file = next(cache_dir.glob("*.uint8"))
        new_stamp = cache_file.stat().st_mtime_ns
        note = "written" if stamp is None else ("reused (unchanged)" if new_stamp == stamp else "REWRITTEN")
        stamp = new_stamp
        print(f"| {label} | {seconds:.1f} | {note} |")
    print(f"\n{machine_line(device)} (at the end)")


if __name__ == "__main__":
    main()
