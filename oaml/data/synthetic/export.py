"""Write the synthetic faces to disk in the layouts the real-data readers expect.

One export exercises every on-disk reader of the project without downloading anything::

    out_dir/
      identities/<identity>/<n>.jpg            one folder per identity (AdaFace / torchvision ImageFolder)
      niqab/kept_faces/<name>.jpg              niqab-occluded faces ...
      niqab/masks/<name>_mask.png              ... and their visibility masks (grayscale, 255 visible, 0 hidden)
      pairs/pairs.txt                          "path_a path_b 0|1" per line, paths relative to pairs/
      pairs/pairs_occluded.txt                 the same pairs, one image of each occluded (occluded-clean)
      pairs/images/, pairs/occluded/, pairs/masks/
      synthetic_val.bin                        InsightFace verification set: pickle of (encoded images, issame)
      synthetic_val_occluded.bin               the occluded-clean version of the same pairs

Identity folders hold clean images (real training sets are mostly unoccluded; occlusion comes from the
training augmentation and the niqab set). Pairs use identities disjoint from the training ones.

CLI: ``python -m oaml.data.synthetic.export --out DIR [--identities N] [--images-per-identity N] ...``
"""

from __future__ import annotations

import argparse
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from oaml.data.synthetic.datasets import SyntheticFaces, SyntheticPairs

BIN_PICKLE_PROTOCOL = 4


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _save_mask(visibility: np.ndarray, path: Path) -> None:
    Image.fromarray(np.where(visibility > 0.5, 255, 0).astype(np.uint8), mode="L").save(path)


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"export target {out_dir} exists and is not a folder; choose another --out")
        if any(out_dir.iterdir()):
            raise FileExistsError(
                f"export target {out_dir} is not empty; choose a new folder or empty it first "
                "(the exporter never overwrites data)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)


def _export_pairs(
    out_dir: Path, clean: SyntheticPairs, occluded: SyntheticPairs, jpeg_quality: int
) -> tuple[list[bytes], list[bytes]]:
    """Write pair images, both pair lists and masks; return the encoded images of both protocols."""
    pairs_dir = out_dir / "pairs"
    for sub in ("images", "occluded", "masks"):
        (pairs_dir / sub).mkdir(parents=True)
    clean_bytes: list[bytes] = []
    occluded_bytes: list[bytes] = []
    clean_paths: list[str] = []
    occluded_paths: list[str] = []
    for index in range(len(clean)):
        stem = f"{index // 2:05d}_{index % 2}"
        image, _ = clean.render(index)
        encoded = _encode_jpeg(image, jpeg_quality)
        (pairs_dir / "images" / f"{stem}.jpg").write_bytes(encoded)
        clean_bytes.append(encoded)
        clean_paths.append(f"images/{stem}.jpg")
        if occluded.kinds[index] is None:  # the clean side of an occluded-clean pair is the same image
            occluded_bytes.append(encoded)
            occluded_paths.append(f"images/{stem}.jpg")
            continue
        image, visibility = occluded.render(index)
        encoded = _encode_jpeg(image, jpeg_quality)
        (pairs_dir / "occluded" / f"{stem}.jpg").write_bytes(encoded)
        _save_mask(visibility, pairs_dir / "masks" / f"{stem}_mask.png")
        occluded_bytes.append(encoded)
        occluded_paths.append(f"occluded/{stem}.jpg")
    for name, paths in (("pairs.txt", clean_paths), ("pairs_occluded.txt", occluded_paths)):
        lines = [f"{paths[2 * i]} {paths[2 * i + 1]} {int(same)}\n" for i, same in enumerate(clean.issame)]
        (pairs_dir / name).write_text("".join(lines))
    return clean_bytes, occluded_bytes


def export_synthetic(
    out_dir: str | Path,
    num_identities: int = 100,
    images_per_identity: int = 20,
    num_pairs: int = 600,
    seed: int = 0,
    *,
    num_niqab: int | None = None,
    pair_identities: int = 100,
    first_pair_identity: int = 100_000,
    image_size: int = 112,
    jpeg_quality: int = 95,
) -> dict[str, object]:
    """Render and write the synthetic data set (layout in the module docstring); return a summary.

    Args:
        out_dir: a new or empty folder (a non-empty one is refused).
        num_identities, images_per_identity: training identities and clean images of each.
        num_pairs: verification pairs (half genuine) over ``pair_identities`` held-out identities starting at
            ``first_pair_identity``.
        num_niqab: niqab images, spread over the training identities (default: one per identity); they are
            images the identity folders do not contain.
        jpeg_quality: JPEG quality of every written face image.
    """
    out_dir = Path(out_dir)
    if num_niqab is not None and num_niqab < 0:
        raise ValueError(f"num_niqab must be >= 0, got {num_niqab}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    faces = SyntheticFaces(
        num_identities, images_per_identity, seed=seed, occluders={}, image_size=image_size
    )
    clean_pairs = SyntheticPairs(
        num_pairs, pair_identities, seed=seed, first_identity=first_pair_identity, image_size=image_size
    )
    occluded_pairs = SyntheticPairs(
        num_pairs, pair_identities, seed=seed, first_identity=first_pair_identity, occluded=True,
        image_size=image_size,
    )  # fmt: skip
    _prepare_out_dir(out_dir)

    width = max(5, len(str(num_identities - 1)))
    for identity in range(num_identities):
        folder = out_dir / "identities" / f"{identity:0{width}d}"
        folder.mkdir(parents=True)
        for n in range(images_per_identity):
            image, _ = faces.render(identity, n, None)
            (folder / f"{n:04d}.jpg").write_bytes(_encode_jpeg(image, jpeg_quality))

    num_niqab = num_identities if num_niqab is None else num_niqab
    kept, masks = out_dir / "niqab" / "kept_faces", out_dir / "niqab" / "masks"
    kept.mkdir(parents=True)
    masks.mkdir(parents=True)
    for j in range(num_niqab):
        identity, n = j % num_identities, images_per_identity + j // num_identities
        image, visibility = faces.render(identity, n, "niqab")
        name = f"{identity:0{width}d}_{n:04d}"
        (kept / f"{name}.jpg").write_bytes(_encode_jpeg(image, jpeg_quality))
        _save_mask(visibility, masks / f"{name}_mask.png")

    clean_bytes, occluded_bytes = _export_pairs(out_dir, clean_pairs, occluded_pairs, jpeg_quality)
    issame = [bool(s) for s in clean_pairs.issame]
    for name, encoded in (("synthetic_val.bin", clean_bytes), ("synthetic_val_occluded.bin", occluded_bytes)):
        with open(out_dir / name, "wb") as handle:
            pickle.dump((encoded, issame), handle, protocol=BIN_PICKLE_PROTOCOL)

    return {
        "out_dir": out_dir,
        "identities": num_identities,
        "identity_images": num_identities * images_per_identity,
        "niqab_images": num_niqab,
        "pairs": num_pairs,
        "genuine_pairs": int(sum(issame)),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        prog="python -m oaml.data.synthetic.export",
        description="Write synthetic faces in the on-disk layouts of OAML's real-data readers.",
    )
    parser.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    parser.add_argument("--identities", type=int, default=100, help="training identities (default 100)")
    parser.add_argument("--images-per-identity", type=int, default=20, help="clean images each (default 20)")
    parser.add_argument("--pairs", type=int, default=600, help="verification pairs (default 600)")
    parser.add_argument("--pair-identities", type=int, default=100, help="held-out identities for the pairs")
    parser.add_argument("--niqab", type=int, default=None, help="niqab images (default: one per identity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--jpeg-quality", type=int, default=95)
    args = parser.parse_args(argv)
    try:
        summary = export_synthetic(
            args.out,
            args.identities,
            args.images_per_identity,
            args.pairs,
            args.seed,
            num_niqab=args.niqab,
            pair_identities=args.pair_identities,
            image_size=args.image_size,
            jpeg_quality=args.jpeg_quality,
        )
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))  # exits with status 2 and the message, no traceback
    print(", ".join(f"{key}={value}" for key, value in summary.items()))
    return summary


if __name__ == "__main__":
    main()
