"""Decoded images per second of the pure-Python RecordIO reader, for 0, 1, 2 DataLoader workers.

Writes a temporary InsightFace-layout `train.rec` of 112x112 JPEGs (synthetic faces from
oaml.data.synthetic.datasets, JPEG quality 95 like InsightFace's packs), then times full passes of a
DataLoader over RecordIODataset.
Also times the start-up of a rec with header record (identity records) and of a shuffled rec without it
(one header read per image).

    python benchmarks/data.py                      # 3000 images, workers 0 1 2
    python benchmarks/data.py --images 20000 --workers 0 2 4 --augment
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from oaml.data.formats.recordio import RecordIODataset
from oaml.data.formats.recordio_format import write_recordio
from oaml.data.pipeline.augment import AdaFaceAugment
from oaml.data.synthetic.datasets import SyntheticFaces


def _encoded_faces(count: int, unique: int, images_per_identity: int) -> list[tuple[bytes, int]]:
    """`count` (JPEG, label) items sorted by label; `unique` rendered faces are reused cyclically."""
    faces = SyntheticFaces(max(1, unique // images_per_identity), images_per_identity, seed=0, occluders={})
    encoded = []
    for index in range(min(unique, len(faces))):
        image, _, _ = faces[index]
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    return [(encoded[i % len(encoded)], i // images_per_identity) for i in range(count)]


def _time_loader(dataset: RecordIODataset, workers: int, batch_size: int) -> tuple[float, float]:
    """(images per second over one full pass, seconds until the first batch)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    first = None
    seen = 0
    for images, _, _ in loader:
        if first is None:
            first = time.perf_counter() - start
        seen += images.shape[0]
    return seen / (time.perf_counter() - start), first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unique", type=int, default=200, help="distinct faces rendered (then reused)")
    parser.add_argument(
        "--augment", action="store_true", help="also apply AdaFaceAugment (0.2/0.2/0.2, flip)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the main process (DataLoader workers always use 1); several threads make "
        "collation of small tensors slower on a busy CPU, which would hide the reader's own speed at 0 workers",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="oaml-bench-") as tmp:
        items = _encoded_faces(args.images, args.unique, images_per_identity=20)
        write_recordio(Path(tmp) / "train", items)
        write_recordio(Path(tmp) / "shuffled", items, header_record=False)
        mean_kib = sum(len(data) for data, _ in items) / len(items) / 1024

        start = time.perf_counter()
        dataset = RecordIODataset(tmp, transform=AdaFaceAugment() if args.augment else None)
        startup_header = time.perf_counter() - start
        start = time.perf_counter()
        RecordIODataset(Path(tmp) / "shuffled.rec")
        startup_scan = time.perf_counter() - start

        print(
            f"# RecordIO reader: {args.images} JPEGs 112x112 (mean {mean_kib:.1f} KiB), "
            f"{dataset.num_classes} classes, batch {args.batch_size}, augment={args.augment}, "
            f"main-process torch threads {args.threads}"
        )
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        )
        print(
            f"# start-up: {startup_header * 1e3:.1f} ms with header record, "
            f"{startup_scan * 1e3:.1f} ms without (header read per image)"
        )
        print("| workers | images/s | first batch (s) |")
        print("|---:|---:|---:|")
        for workers in args.workers:
            rate, first = _time_loader(dataset, workers, args.batch_size)
            print(f"| {workers} | {rate:.0f} | {first:.2f} |")


if __name__ == "__main__":
    main()
