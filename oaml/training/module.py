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
        self.val_set_names = list(val_set_names)
        unknown_masks = sorted(set(mask_val_set_names) - set(self.val_set_names))
        if unknown_masks:
            raise ValueError(f"mask validation sets {unknown_masks} are not among val_set_names")
        self.mask_val_set_names = set(mask_val_set_names)
        self.checkpoint_info = dict(checkpoint_info or {})
        self._val_outputs: dict[int, dict[str, list[Tensor]]] = {}
        self.last_validated_step = -1

    # ----------------------------------------------------------------------------------------- training
    def training_step(
        self, batch: Sequence[Tensor] | Mapping[str, Sequence[Tensor]], batch_idx: int
    ) -> Tensor:
        """One backbone pass over main-stream and mask-stream images; each loss on the images it concerns."""
        main, masks = (batch["main"], batch.get("masks")) if isinstance(batch, Mapping) else (batch, None)
        images, labels, visibility = main[:3]
        num_main = images.shape[0]
        if masks is not None:
            images = torch.cat([images, masks[0]])
        feature_size = tuple(self.backbone.feature_size)
        main_target = downsample_visibility(visibility, feature_size)
        mask_target = None if masks is None else downsample_visibility(masks[1], feature_size)
        embedding, norm, predicted_all, feature_maps = self.backbone(
            images, return_occlusion=True, erase_visibility=self._erase_targets(main_target, mask_target)
        )

        # Recognition losses: main-stream images only (mask-set faces carry no identity labels).
        logits = self.margin_head(embedding[:num_main], norm[:num_main], labels)
        loss_adaface = F.cross_entropy(logits, labels)
        predicted = predicted_all[:num_main]
        qaconv_visibility = predicted.detach() if self.detach_visibility else predicted
        if self.global_step < self.weighting_start_step:
            # Warm-up: QAConv learns without the visibility until the head has had time to become reliable.
            qaconv_visibility = None
        # Self-matching of the batch: the probe visibility serves both sides.
        scores = self.matcher(feature_maps[:num_main], prob_occ=qaconv_visibility)
        loss_qaconv, matching_acc = self.matching_loss(scores, labels)
        main_embedding = embedding[:num_main].detach()
        self.score_norm.update(
            {"adaface": main_embedding @ main_embedding.t(), "qaconv": scores},
            impostor=labels.unsqueeze(0) != labels.unsqueeze(1),
        )

        # Occlusion loss: every image whose visibility is known. Main-stream visibility counts only when the
        # data knows it (synthetic faces, pasted occluders); otherwise it is an all-ones placeholder that
        # would teach "everything is visible", also on real faces covered by hands or glasses.
        predictions, targets = [], []
        if self.main_visibility_known:
            predictions.append(predicted)
            targets.append(main_target)
        if masks is not None:
            predictions.append(predicted_all[num_main:])
            targets.append(mask_target)
        if predictions:
            loss_occlusion = self.occlusion_loss(torch.cat(predictions), torch.cat(targets))
        else:  # no target at all: build_model has set the weight to 0; log a zero, train nothing
            loss_occlusion = predicted_all.sum() * 0.0

        losses = {"adaface": loss_adaface, "qaconv": loss_qaconv, "occlusion": loss_occlusion}
        total = sum(self.loss_weights[name] * value for name, value in losses.items())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"training loss is not finite at step {self.global_step}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + " (lower optimizer.optimizer.lr or set trainer.gradient_clip_val)"
            )
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=num_main)
        self.log("train/loss", total, prog_bar=True, batch_size=num_main)
        self.log("train/matching_acc", matching_acc, prog_bar=True, batch_size=num_main)
        self.log("train/feature_norm", norm[:num_main].mean(), batch_size=num_main)
        return total

    def _erase_targets(self, main_target: Tensor, mask_target: Tensor | None) -> Tensor | None:
        """What the body's erasure follows in training (``occlusion.erase_source``): None for the head's own
        map; with ``target`` the known visibility (main-stream faces whose visibility is a placeholder erase
        nothing, as their placeholder says all visible)."""
        if self.erase_source != "target" or not getattr(self.backbone, "occlusion_erase", False):
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
        features = embed_faces(self.backbone, images)
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
