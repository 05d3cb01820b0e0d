"""Does the training loop's data path keep the model busy? Loader images/s against model images/s.

The loader side is the real training DataLoader of each data config (``OAMLDataModule.train_dataloader``:
identity-balanced batches, keyed items, the config's own augmentation), for ``--workers`` worker counts:

- ``synthetic``: faces rendered on the fly (the default run's data);
- ``image_folder``: JPEG faces in identity folders (written once by ``oaml.data.synthetic.export``), with the
  config's occluder and AdaFace augmentations;
- ``recordio``: the same faces packed in an InsightFace ``train.rec``, same augmentations.

The model side is an OAML training step (forward, the three losses, backward, SGD) of ``--backbone`` at
``--batch``, in images/s (see ``benchmarks/train_step.py``). The loader keeps up when its images/s exceeds
the model's: with ``W`` workers it can give at most ``W`` cores' worth, which a GPU host has to spare and a
2-core CPU machine does not (the loader and the model then share the same cores).

    python benchmarks/loader_vs_model.py --workers 0 2 --batches 10
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from pathlib import Path

import torch
from common import compose_config, interleaved_medians, machine_line
from PIL import Image
from train_step import Stepper, make_batch

from oaml.data.formats.recordio_format import write_recordio
from oaml.data.synthetic.export import export_synthetic
from oaml.training.build import build_model


def prepare(workdir: Path) -> dict[str, list[str]]:
    """Data of each kind (written once into ``workdir``) and the overrides that select it."""
    folder = workdir / "export"
    if not (folder / "identities").is_dir():
        export_synthetic(folder, num_identities=100, images_per_identity=20, num_pairs=20)
    rec = workdir / "rec"
    if not (rec / "train.rec").is_file():
        rec.mkdir(parents=True, exist_ok=True)
        items = []
        for label, identity in enumerate(sorted((folder / "identities").iterdir())):
            for path in sorted(identity.glob("*.jpg")):
                buffer = io.BytesIO()
                Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=95)
                items.append((buffer.getvalue(), label))
        write_recordio(rec / "train", items)
    return {
        "synthetic": ["data=synthetic"],
        "image_folder": ["data=image_folder", f"data.train.root={folder / 'identities'}"],
        "recordio": ["data=recordio", f"data.train.root={rec}"],
    }


def loader_rate(overrides: list[str], workers: int, batch: int, batches: int) -> float:
    """Images/s of the training DataLoader over ``batches`` batches, after the first (worker start-up)."""
    cfg = compose_config([*overrides, f"data.num_workers={workers}", f"data.batch_size={batch}"])
    from hydra.utils import instantiate

    loader = instantiate(cfg.data).train_dataloader()
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        seen += next(iterator)[0].shape[0]
    return seen / (time.perf_counter() - start)


def model_rate(backbone: str, batch: int, steps: int) -> float:
    cfg = compose_config([f"backbone={backbone}"])
    model = build_model(cfg, num_classes=10575, val_set_names=[]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = Stepper(model, make_batch(batch, 0, torch.device("cpu")), optimizer, None, None)
    seconds = interleaved_medians({"oaml": step}, torch.device("cpu"), steps, warmup=1)["oaml"]
    return batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per loader")
    parser.add_argument("--backbone", default="ir18")
    parser.add_argument("--model-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/oaml-bench-loader"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    torch.set_num_threads(args.threads)
    sources = prepare(args.workdir)
    print(machine_line(torch.device("cpu")))
    print(
        f"# loader batch {args.batch}, {args.batches} timed batches after the first; model batch {args.model_batch}"
    )
    print("| data | workers | loader images/s |")
    print("|---|---:|---:|")
    for name, overrides in sources.items():
        for workers in args.workers:
            rate = loader_rate(overrides, workers, args.batch, args.batches)
            print(f"| {name} | {workers} | {rate:,.0f} |")
    rate = model_rate(args.backbone, args.model_batch, args.steps)
    print(f"\nmodel: OAML training step, {args.backbone}, batch {args.model_batch}: {rate:,.1f} images/s")
    print(f"{machine_line(torch.device('cpu'))} (at the end)")


if __name__ == "__main__":
    main()
