"""The LightningModule: one backbone pass, three losses, pair-level and mask-set validation.

It owns no data logic and no metric formulas: batches come from ``oaml.data``, scores from
``oaml.evaluation.scoring``, numbers from ``oaml.evaluation.metrics``. What it adds is the wiring and the
two gradient-isolation switches that decide which loss shapes which weights:

- ``occlusion.detach_features`` (in the backbone): the OcclusionHead reads detached features, so the MSE on
  visibility trains the head only and cannot bend the recognition features toward mask prediction;
- ``detach_visibility``: the predicted visibility is detached before it weights QAConv, so the matching loss
  cannot lower its own value by declaring hard regions "hidden".

QAConv's loss does reach the backbone: the feature maps it matches are not detached (the predecessor's were).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from oaml.errors import ConfigError
from oaml.evaluation.metrics import verification_report, visibility_report
from oaml.evaluation.scoring import SCORE_NAMES, embed_faces, score_pairs, split_pairs
from oaml.losses.occlusion import downsample_visibility
from oaml.models.score_norm import ImpostorScoreNorm
from oaml.training.gather import gather_by_index

LOSS_NAMES = ("adaface", "qaconv", "occlusion")
NUM_FOLDS = 10
# val.erase (with occlusion.erase): each face erased by its own map, or both faces of a pair by their union.
VAL_ERASURES = ("own", "pair")


def split_weight_decay(modules: Sequence[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) parameters: AdaFace's recipe exempts BatchNorm parameters from weight decay."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            exempt = isinstance(sub, nn.modules.batchnorm._BatchNorm)
            for param in sub.parameters(recurse=False):
                if id(param) in seen or not param.requires_grad:
                    continue
                seen.add(id(param))
                (no_decay if exempt else decay).append(param)
    return decay, no_decay


class OAMLModule(pl.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        margin_head: nn.Module,
        matcher: nn.Module,
        matching_loss: nn.Module,
        occlusion_loss: nn.Module,
        loss_weights: Mapping[str, float],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        head_lr: float | None = None,
        detach_visibility: bool = True,
        weighting_start_step: int = 0,
        erase_source: str = "predicted",
        main_visibility_known: bool = True,
        fusion: Mapping[str, float] | None = None,
        val_erasure: str = "own",
        val_set_names: Sequence[str] = (),
        mask_val_set_names: Sequence[str] = (),
        checkpoint_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        unknown = set(loss_weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; the loss.* weights are {LOSS_NAMES}")
        self.backbone = backbone
        self.margin_head = margin_head
        self.matcher = matcher
        self.matching_loss = matching_loss
        self.occlusion_loss = occlusion_loss
        self.loss_weights = {name: float(loss_weights.get(name, 0.0)) for name in LOSS_NAMES}
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.head_lr = head_lr
        self.detach_visibility = detach_visibility
        if weighting_start_step < 0:
            raise ConfigError(
                f"occlusion.weighting_start_step must be >= 0 (0: from the first step), got {weighting_start_step}"
            )
        self.weighting_start_step = int(weighting_start_step)
        if erase_source not in ("predicted", "target"):
            raise ConfigError(f"occlusion.erase_source must be predicted or target, got {erase_source!r}")
        self.erase_source = erase_source
        # Impostor statistics of the training batches: they put both scores on one scale for the fused score.
        self.score_norm = ImpostorScoreNorm(("adaface", "qaconv"))
        self.main_visibility_known = main_visibility_known
        self.fusion = dict(fusion or {"adaface": 0.5, "qaconv": 0.5})
        if val_erasure not in VAL_ERASURES:
            raise ConfigError(f"val.erase must be one of {VAL_ERASURES}, got {val_erasure!r}")
        self.val_erasure = val_erasure
        self.val_set_names = list(val_set_names)
        unknown_masks = sorted(set(mask_val_set_names) - set(self.val_set_names))
        if unknown_masks:
            raise ValueError(f"mask validation sets {unknown_masks} are not among val_set_names")
        self.mask_val_set_names = set(mask_val_set_names)
        self.checkpoint_info = dict(checkpoint_info or {})
        self._val_outputs: dict[int, dict[str, list[Tensor]]] = {}
        self.last_validated_step = -1
        # How often training_step checks the loss for NaN/inf on the host (see _check_finite_now).
        self.finite_check_every: int | None = None

    # ----------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Before fit: refuse an all-zero loss and freeze what no loss trains (see :meth:`_untrained_parts`)."""
        if stage != "fit":
            return
        if not any(weight > 0 for weight in self.loss_weights.values()):
            raise ConfigError(
                "every loss weight is 0 (loss.adaface, loss.qaconv, loss.occlusion): nothing would train; "
                "set at least one, e.g. loss.adaface=1"
            )
        for part in self._untrained_parts():
            part.requires_grad_(False)

    def _untrained_parts(self) -> list[nn.Module]:
        """Modules whose parameters no loss with a weight above 0 reaches: training_step skips them, and they
        are frozen so that the optimizer (weight decay, momentum) leaves them alone and DDP does not wait for
        their gradients."""
        weights = self.loss_weights
        parts: list[nn.Module] = []
        if weights["adaface"] == 0:
            parts += [self.margin_head, self.backbone.output_layer]
        if weights["qaconv"] == 0:
            parts.append(self.matcher)
        visibility_trained_by_qaconv = (
            weights["qaconv"] > 0 and not self.detach_visibility and self._matcher_weighting() != "none"
        )
        if weights["occlusion"] == 0 and not visibility_trained_by_qaconv:
            parts.append(self.backbone.occlusion_head)
        return parts

    def _matcher_weighting(self) -> str | None:
        return getattr(self.matcher, "weighting", None)

    def training_step(
        self, batch: Sequence[Tensor] | Mapping[str, Sequence[Tensor]], batch_idx: int
    ) -> Tensor:
        """One backbone pass over main-stream and mask-stream images; each loss on the images it concerns.

        A loss whose weight is 0 is not computed at all, nor is what only it needs: with ``loss.qaconv=0
        loss.occlusion=0`` the step is AdaFace's own (backbone, margin head, cross-entropy; no mask-stream
        images, no QAConv, no OcclusionHead). Nothing here reads a tensor's value on the host (a host-device
        synchronisation would stall an accelerator every step), except the finiteness check of the loss on the
        steps where Lightning logs (``trainer.log_every_n_steps``) and reads the values anyway.
        """
        main, masks = (batch["main"], batch.get("masks")) if isinstance(batch, Mapping) else (batch, None)
        weights = self.loss_weights
        images, labels, visibility = main[:3]
        num_main = images.shape[0]
        if masks is not None and weights["occlusion"] > 0:  # mask-stream faces serve the occlusion loss only
            images = torch.cat([images, masks[0]])
        else:
            masks = None
        feature_size = tuple(self.backbone.feature_size)
        needs_targets = weights["occlusion"] > 0 or self._erase_targets_needed()
        main_target = downsample_visibility(visibility, feature_size) if needs_targets else None
        mask_target = None if masks is None else downsample_visibility(masks[1], feature_size)
        weighting_on = self.global_step >= self.weighting_start_step and self._matcher_weighting() != "none"
        needs_visibility = (
            weights["occlusion"] > 0
            or getattr(self.backbone, "occlusion_erase", False)
            or (weights["qaconv"] > 0 and weighting_on)
        )
        if needs_visibility:
            embedding, norm, predicted_all, feature_maps = self.backbone(
                images, return_occlusion=True, erase_visibility=self._erase_targets(main_target, mask_target)
            )
        elif weights["qaconv"] > 0:  # feature maps for QAConv, no OcclusionHead
            feature_maps = self.backbone.forward_features(images)
            embedding, norm = self.backbone.embed(feature_maps)
        else:  # AdaFace's own forward
            embedding, norm = self.backbone(images)

        losses: dict[str, Tensor] = {}
        # Recognition losses: main-stream images only (mask-set faces carry no identity labels).
        if weights["adaface"] > 0:
            logits = self.margin_head(embedding[:num_main], norm[:num_main], labels)
            losses["adaface"] = F.cross_entropy(logits, labels)
        matching_acc = None
        if weights["qaconv"] > 0:
            qaconv_visibility = None  # weighting none, or the warm-up before the head is reliable
            if weighting_on:
                predicted = predicted_all[:num_main]
                qaconv_visibility = predicted.detach() if self.detach_visibility else predicted
            # Self-matching of the batch: the probe visibility serves both sides.
            scores = self.matcher(feature_maps[:num_main], prob_occ=qaconv_visibility)
            losses["qaconv"], matching_acc = self.matching_loss(scores, labels)
            # Impostor statistics for the fused score (without QAConv there is nothing to fuse: not gathered).
            main_embedding = embedding[:num_main].detach()
            self.score_norm.update(
                {"adaface": main_embedding @ main_embedding.t(), "qaconv": scores},
                impostor=labels.unsqueeze(0) != labels.unsqueeze(1),
            )

        # Occlusion loss: every image whose visibility is known. Main-stream visibility counts only when the
        # data knows it (synthetic faces, pasted occluders); otherwise it is an all-ones placeholder that
        # would teach "everything is visible", also on real faces covered by hands or glasses.
        if weights["occlusion"] > 0:
            predictions, targets = [], []
            if self.main_visibility_known:
                predictions.append(predicted_all[:num_main])
                targets.append(main_target)
            if masks is not None:
                predictions.append(predicted_all[num_main:])
                targets.append(mask_target)
            if predictions:  # else no target at all (build_model sets the weight to 0 then)
                losses["occlusion"] = self.occlusion_loss(torch.cat(predictions), torch.cat(targets))

        if not losses:
            raise ConfigError(
                "every loss weight is 0 (loss.adaface, loss.qaconv, loss.occlusion): nothing would train; "
                "set at least one, e.g. loss.adaface=1"
            )
        total = sum(weights[name] * value for name, value in losses.items())
        if self._check_finite_now() and not torch.isfinite(total):
            raise FloatingPointError(
                f"training loss is not finite at step {self.global_step}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + " (lower optimizer.optimizer.lr or set trainer.gradient_clip_val)"
            )
        zero = total.detach().new_zeros(())
        for name in LOSS_NAMES:  # a term that was not computed logs 0 (its share of the total)
            self.log(f"train/loss_{name}", losses.get(name, zero), batch_size=num_main)
        self.log("train/loss", total, prog_bar=True, batch_size=num_main)
        if matching_acc is not None:
            self.log("train/matching_acc", matching_acc, prog_bar=True, batch_size=num_main)
        self.log("train/feature_norm", norm[:num_main].mean(), batch_size=num_main)
        return total

    def _check_finite_now(self) -> bool:
        """Whether this step checks the loss for NaN/inf: every ``finite_check_every`` steps (None: Lightning's
        ``log_every_n_steps``, when it reads the logged values on the host anyway; every step without a
        Trainer). A NaN from a bad batch is then reported within that many steps."""
        every = self.finite_check_every
        if every is None:
            every = self._trainer.log_every_n_steps if self._trainer is not None else 1
        return (self.global_step + 1) % max(int(every), 1) == 0

    def _erase_targets_needed(self) -> bool:
        return self.erase_source == "target" and getattr(self.backbone, "occlusion_erase", False)

    def _erase_targets(self, main_target: Tensor, mask_target: Tensor | None) -> Tensor | None:
        """What the body's erasure follows in training (``occlusion.erase_source``): None for the head's own
        map; with ``target`` the known visibility (main-stream faces whose visibility is a placeholder erase
        nothing, as their placeholder says all visible)."""
        if not self._erase_targets_needed():
            return None
        return main_target if mask_target is None else torch.cat([main_target, mask_target])

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(
                "this model was built without an optimizer (evaluation only); set optimizer.optimizer"
            )
        body = [self.backbone]
        heads = [self.margin_head, self.matcher]
        if self.head_lr is None:
            decay, no_decay = split_weight_decay(body + heads)
            groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        else:
            body_decay, body_no_decay = split_weight_decay(body)
            head_decay, head_no_decay = split_weight_decay(heads)
            groups = [
                {"params": body_decay},
                {"params": body_no_decay, "weight_decay": 0.0},
                {"params": head_decay, "lr": self.head_lr},
                {"params": head_no_decay, "weight_decay": 0.0, "lr": self.head_lr},
            ]
        optimizer = self.optimizer_factory(params=[g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        extra = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, **extra)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    # --------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = defaultdict(lambda: defaultdict(list))

    def validation_step(
        self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Score the batch; return the predicted visibility of its images (callbacks show it, see
        ``VisibilityImageLogger``, without running the backbone again)."""
        if self._is_mask_set(dataloader_idx):
            return self._mask_validation_step(batch, dataloader_idx)
        images, visibility, pair_index, issame = batch
        features = embed_faces(self.backbone, images, pair_erasure=self.val_erasure == "pair")
        first, second = split_pairs(features)
        scores = score_pairs(first, second, self.matcher, self.fusion, self.score_norm)
        target = downsample_visibility(visibility, tuple(features.visibility.shape[-2:]))
        out = self._val_outputs[dataloader_idx]
        out["pair_index"].append(pair_index[0::2])
        out["issame"].append(issame[0::2].long())
        for name, value in scores.items():
            out[name].append(value.float())
        # Per image, flattened visibility maps (a few floats each): first image of each pair, then second.
        out["predicted_first"].append(features.visibility[0::2].flatten(1).float())
        out["predicted_second"].append(features.visibility[1::2].flatten(1).float())
        out["target_first"].append(target[0::2].flatten(1).float())
        out["target_second"].append(target[1::2].flatten(1).float())
        return {"visibility": features.visibility}

    def _is_mask_set(self, dataloader_idx: int) -> bool:
        return (
            dataloader_idx < len(self.val_set_names)
            and self.val_set_names[dataloader_idx] in self.mask_val_set_names
        )

    def _mask_validation_step(self, batch: Sequence[Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """A mask set: faces with true visibility, no pairs; the OcclusionHead's view of each face."""
        images, visibility, face_index = batch
        predicted = embed_faces(self.backbone, images, flip=False).visibility
        target = downsample_visibility(visibility, tuple(predicted.shape[-2:]))
        out = self._val_outputs[dataloader_idx]
        out["face_index"].append(face_index)
        out["predicted"].append(predicted.flatten(1).float())
        out["target"].append(target.flatten(1).float())
        return {"visibility": predicted}

    def on_validation_epoch_end(self) -> None:
        for loader_idx, name in enumerate(self.val_set_names):
            outputs = self._val_outputs.get(loader_idx)
            if not outputs:
                continue
            stacked = {key: torch.cat(values) for key, values in outputs.items()}
            index_key = "face_index" if name in self.mask_val_set_names else "pair_index"
            _, gathered = gather_by_index(stacked.pop(index_key), stacked)
            arrays = {k: v.detach().cpu().numpy() for k, v in gathered.items()}
            if name in self.mask_val_set_names:
                occluded = (arrays["target"] < 1.0).any(axis=1)
                metrics = visibility_report(arrays["predicted"], arrays["target"], occluded)
            else:
                metrics = self._set_metrics(arrays, name)
            for key, value in metrics.items():
                # Every rank holds the same gathered value: sync_dist averages identical numbers (exact).
                self.log(f"val/{name}/{key}", value, add_dataloader_idx=False, sync_dist=True)
        self._val_outputs = {}
        if not self.trainer.sanity_checking:
            self.last_validated_step = self.global_step

    @staticmethod
    def _set_metrics(arrays: dict[str, np.ndarray], name: str = "") -> dict[str, float]:
        issame = arrays["issame"].astype(bool)
        metrics: dict[str, float] = {}
        if issame.size >= 2 * NUM_FOLDS:
            for score in SCORE_NAMES:
                for key, value in verification_report(arrays[score], issame, num_folds=NUM_FOLDS).items():
                    metrics[f"{score}_{key}"] = value
        else:
            rank_zero_warn(
                f"val set '{name}': only {issame.size} pairs were scored (fast_dev_run or limit_val_batches?); "
                f"{NUM_FOLDS}-fold verification metrics need {2 * NUM_FOLDS} and are left out of this validation"
            )
        predicted = np.concatenate([arrays["predicted_first"], arrays["predicted_second"]])
        target = np.concatenate([arrays["target_first"], arrays["target_second"]])
        occluded = (target < 1.0).any(axis=1)
        metrics.update(visibility_report(predicted, target, occluded))
        return metrics

    # -------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what is needed to rebuild the backbone without the training config (export, evaluate)."""
        checkpoint["oaml"] = dict(self.checkpoint_info)
