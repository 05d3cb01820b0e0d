"""Time per image of a full OAML training step against an AdaFace-only step, measured side by side.

A step is what Lightning runs per batch: ``OAMLModule.training_step`` (one backbone forward over the main and,
with ``--mask-batch``, mask-stream images; every loss with a weight above 0), backward, SGD step. The
variants share one model (backbone, margin head, QAConv: same weights, same images) and differ only in their
loss weights, so a variant costs exactly what its losses compute:

- ``adaface``: ``loss.qaconv=0 loss.occlusion=0``: AdaFace's own step (the zero-weight branches are skipped);
- ``+qaconv``: ``loss.occlusion=0`` (QAConv self-matching and the pairwise matching loss on top);
- ``+occlusion``: ``loss.qaconv=0`` (OcclusionHead and occlusion loss on top);
- ``oaml``: the default weights (the default run: no mask stream, main-stream visibility supervises the head);
- ``oaml+masks``: with a mask stream of ``--mask-batch`` faces (only when given).

The parts are then timed alone (forward+backward), to say where the extra time of ``oaml`` goes:
``qaconv`` (QAConv on the batch's feature maps with the matching loss), ``matching_loss`` (the loss alone on a
[B, B] score matrix), ``occlusion_head`` (head on the images, with its loss), ``bookkeeping`` (visibility
targets and the impostor score statistics). All cases take turns step by step (medians of ``--steps``).
Data loading runs in DataLoader workers alongside the step and is measured by ``benchmarks/data.py``.

    python benchmarks/train_step.py --backbones ir_nano ir18 --batch 16
    python benchmarks/train_step.py --backbones ir50 --batch 256 --device cuda --precision bf16 --steps 20
"""

from __future__ import annotations

import argparse
import warnings

import torch
from common import compose_config, interleaved_medians, machine_line

from oaml.data.pipeline.normalize import normalize_faces
from oaml.data.synthetic.datasets import SyntheticFaces
from oaml.losses.occlusion import downsample_visibility
from oaml.training.build import build_model
from oaml.training.fast_paths import apply_fast_paths
from oaml.training.module import OAMLModule

VARIANTS = {
    "adaface": {"qaconv": 0.0, "occlusion": 0.0},
    "+qaconv": {"occlusion": 0.0},
    "+occlusion": {"qaconv": 0.0},
    "oaml": {},
}
DTYPES = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def make_batch(batch: int, mask_batch: int, device: torch.device) -> dict:
    """Real synthetic faces, P identities x 4 images, with their visibility; mask-stream faces after them."""
    faces = SyntheticFaces(max(1, (batch + mask_batch) // 4 + 1), 4, seed=0)
    items = [faces[i] for i in range(batch + mask_batch)]
    images = normalize_faces(torch.stack([item[0] for item in items])).to(device)
    labels = torch.tensor([item[1] for item in items], device=device)
    visibility = torch.stack([item[2] for item in items]).float().to(device)
    main = (images[:batch], labels[:batch], visibility[:batch])
    if not mask_batch:
        return {"main": main}
    return {"main": main, "masks": (images[batch:], visibility[batch:])}


class Stepper:
    """One training step of ``module`` (sharing its parts with the other variants) as a callable."""

    def __init__(self, module: OAMLModule, batch: dict, optimizer, dtype, scaler) -> None:
        self.module, self.batch, self.optimizer, self.dtype, self.scaler = (
            module,
            batch,
            optimizer,
            dtype,
            scaler,
        )
        self.module.finite_check_every = 10**9  # Lightning checks at its logging steps; none here

    def __call__(self) -> None:
        # The variants share modules: freeze what this variant does not train, as its setup("fit") would.
        for param in self.module.parameters():
            param.requires_grad_(True)
        for part in self.module._untrained_parts():
            part.requires_grad_(False)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.module.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.module.training_step(self.batch, 0)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()


def part_cases(model: OAMLModule, batch: dict, dtype) -> dict:
    """The extra parts of an OAML step alone, forward+backward."""
    images, labels, visibility = batch["main"]
    device = images.device
    with torch.no_grad():
        feature_maps = model.backbone.forward_features(images)
    size = tuple(model.backbone.feature_size)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def qaconv() -> None:
        maps = feature_maps.detach().requires_grad_()
        with autocast():
            loss, _ = model.matching_loss(model.matcher(maps), labels)
        loss.backward()

    def matching_loss() -> None:
        scores = torch.randn(len(labels), len(labels), device=device, requires_grad=True)
        model.matching_loss(scores, labels)[0].backward()

    def occlusion_head() -> None:
        with autocast():
            predicted = model.backbone.occlusion(images)
        model.occlusion_loss(predicted, downsample_visibility(visibility, size)).backward()

    def bookkeeping() -> None:
        downsample_visibility(visibility, size)
        scores = torch.randn(len(labels), len(labels), device=device)
        model.score_norm.update({"adaface": scores, "qaconv": scores}, labels[None] != labels[:, None])

    return {
        "qaconv": qaconv,
        "matching_loss": matching_loss,
        "occlusion_head": occlusion_head,
        "bookkeeping": bookkeeping,
    }


def run_backbone(name: str, args: argparse.Namespace, device: torch.device) -> None:
    cfg = compose_config([f"backbone={name}", f"occlusion.weighting={args.weighting}"])
    base = build_model(cfg, num_classes=args.classes, val_set_names=[]).to(device).train()
    apply_fast_paths(base.backbone, channels_last=args.channels_last, compile=args.compile)
    optimizer = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "16" else None
    dtype = DTYPES[args.precision]
    batch = make_batch(args.batch, args.mask_batch, device)
    main_only = {"main": batch["main"]}
    cases, images = {}, {}
    variants = dict(VARIANTS)
    if args.mask_batch:
        variants["oaml+masks"] = {}
    for variant, override in variants.items():
        weights = {**base.loss_weights, **override}
        module = OAMLModule(
            base.backbone, base.margin_head, base.matcher, base.matching_loss, base.occlusion_loss, weights
        )
        module.score_norm = base.score_norm
        module.to(device)
        step_batch = batch if variant == "oaml+masks" else main_only
        cases[variant] = Stepper(module, step_batch, optimizer, dtype, scaler)
        images[variant] = args.batch + (args.mask_batch if variant == "oaml+masks" else 0)
    for part, fn in part_cases(base, main_only, dtype).items():
        cases[f"part:{part}"] = fn
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = interleaved_medians(cases, device, args.steps, args.warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    reference = seconds["adaface"] / images["adaface"]
    print(
        f"\n{name}, batch {args.batch} (+{args.mask_batch} mask-stream faces in oaml+masks), {args.precision}"
    )
    print("| step | ms / step | images/s | ms / image | vs adaface per image |")
    print("|---|---:|---:|---:|---:|")
    for variant in variants:
        per_image = seconds[variant] / images[variant]
        print(
            f"| {variant} | {1e3 * seconds[variant]:,.1f} | {1 / per_image:,.1f} | {1e3 * per_image:.2f} | "
            f"{per_image / reference:.3f}x |"
        )
    extra = seconds["oaml"] - seconds["adaface"]
    print(f"\nextra time of oaml over adaface: {1e3 * extra:,.1f} ms/step; the parts alone (fwd+bwd):")
    print("| part | ms / step | share of adaface step |")
    print("|---|---:|---:|")
    for part in ("qaconv", "matching_loss", "occlusion_head", "bookkeeping"):
        value = seconds[f"part:{part}"]
        print(f"| {part} | {1e3 * value:,.2f} | {value / seconds['adaface']:.1%} |")
    if peak is not None:
        print(f"\npeak GPU memory over all cases: {peak:.2f} GiB")
    if args.check_sync:
        check_sync(cases["oaml+masks" if args.mask_batch else "oaml"])


def check_sync(step: Stepper) -> None:
    """Run one OAML step with CUDA's sync debug mode set to error: any host-device synchronisation (``.item()``,
    a boolean index, a blocking copy) in the step raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        verdict = "none"
    except RuntimeError as error:
        verdict = f"FOUND: {str(error).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print(f"host-device synchronisations in one oaml training step (forward, backward, SGD step): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["ir_nano", "ir18", "ir50"])
    parser.add_argument("--batch", type=int, default=16, help="main-stream images per step (P x 4)")
    parser.add_argument("--mask-batch", type=int, default=0, help="mask-stream faces (adds oaml+masks)")
    parser.add_argument("--classes", type=int, default=10575, help="margin head classes (CASIA-WebFace)")
    parser.add_argument("--weighting", default="none", help="occlusion.weighting of QAConv")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="32", help="autocast dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (model.compile)")
    parser.add_argument("--check-sync", action="store_true", help="CUDA: fail on host-device syncs in a step")
    args = parser.parse_args()
    if args.check_sync and (not args.device.startswith("cuda") or args.precision == "16"):
        parser.error("--check-sync needs --device cuda and no gradient scaler (--precision 32 or bf16)")
    if args.batch % 4 or args.batch < 8:
        parser.error("--batch must be a multiple of 4 (identities x 4 images), at least 8")
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: nothing to log to
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(machine_line(device))
    print(
        f"# steps {args.steps} (median), warm-up {args.warmup}, classes {args.classes}, weighting "
        f"{args.weighting}, channels_last {args.channels_last}, compile {args.compile}"
    )
    for name in args.backbones:
        run_backbone(name, args, device)
    print(f"\n{machine_line(device)} (at the end)")


if __name__ == "__main__":
    main()
