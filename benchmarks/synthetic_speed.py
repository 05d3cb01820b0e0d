"""Rendering speed of the built-in synthetic faces: CPU time per image, single process, random access.

python benchmarks/synthetic_speed.py [--identities 500] [--images 20]

The default training run renders every image on the fly in DataLoader workers, so this number decides how
much of the 2-core budget goes to data rather than to the model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from oaml.data.synthetic.datasets import SyntheticFaces


def cpu_seconds(dataset: SyntheticFaces, order: np.ndarray) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for index in order:
        dataset[int(index)]
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| occluders | images | CPU time (s) | wall time (s) | CPU ms per image |")
    print("|---|---:|---:|---:|---:|")
    for label, occluders in (("clean", {}), ("default mix (about 50% occluded)", None)):
        dataset = SyntheticFaces(args.identities, args.images, seed=0, occluders=occluders)
        order = np.random.default_rng(0).permutation(len(dataset))
        cpu, wall = cpu_seconds(dataset, order)
        print(f"| {label} | {len(dataset)} | {cpu:.1f} | {wall:.1f} | {1000 * cpu / len(dataset):.2f} |")


if __name__ == "__main__":
    main()
