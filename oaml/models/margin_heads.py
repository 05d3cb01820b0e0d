"""Margin-based classification heads for face recognition: AdaFace, ArcFace, CosFace.

One interface for all three::

    logits = head(embeddings, norms, labels)   # [B, E] L2-normalised, [B, 1], [B] -> [B, K]
    loss = F.cross_entropy(logits, labels)

The logits are scaled cosines to each class centre (the columns of ``kernel`` [E, K], L2-normalised on the
fly) with the margin applied at each sample's label column only. The caller applies cross-entropy.

References:
- CosFace (Wang et al., CVPR 2018): additive cosine margin, s * (cos(theta_y) - m).
- ArcFace (Deng et al., CVPR 2019): additive angular margin, s * cos(theta_y + m).
- AdaFace (Kim et al., CVPR 2022, eq. 10-12; mk-minchul/AdaFace ``head.py``): the feature norm is a proxy
  of image quality; with the norm standardised against an EMA of the batch statistics,
  z = clip(h * (||f|| - mean) / (std + eps), -1, 1), the target logit is s * (cos(theta_y - m*z) - (m + m*z)).
  High-quality samples (z -> 1) get an angular margin of -m and an additive margin of 2m (ArcFace-like
  emphasis on hard samples); low-quality ones (z -> -1) get angular +m and additive 0 (easy samples count
  more). With h = 0 it reduces to CosFace with margin m.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _MarginHead(nn.Module):
    """Holds the class-centre matrix ``kernel`` [embedding_size, num_classes] and computes cosines."""

    def __init__(self, embedding_size: int, num_classes: int, s: float) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 2:
            raise ValueError(
                f"{type(self).__name__} needs embedding_size >= 1 and num_classes >= 2, "
                f"got embedding_size={embedding_size}, num_classes={num_classes}"
            )
        if s <= 0:
            raise ValueError(f"{type(self).__name__} scale s must be positive, got {s}")
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.s = float(s)
        self.kernel = nn.Parameter(torch.empty(self.embedding_size, self.num_classes))
        with torch.no_grad():
            # Random unit-norm class centres, as AdaFace initialises them (uniform, then per-column renorm).
            self.kernel.uniform_(-1.0, 1.0)
            self.kernel.copy_(F.normalize(self.kernel, dim=0))

    def _check(self, embeddings: Tensor, norms: Tensor | None, labels: Tensor) -> None:
        name = type(self).__name__
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"{name} expects embeddings [B, {self.embedding_size}], got {tuple(embeddings.shape)}"
            )
        batch = embeddings.shape[0]
        if labels.shape != (batch,) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{name} expects integer labels [B]=[{batch}], got {tuple(labels.shape)} {labels.dtype}"
            )
        if norms is not None and norms.shape != (batch, 1):
            raise ValueError(f"{name} expects norms [B, 1]=[{batch}, 1], got {tuple(norms.shape)}")
        if batch and labels.device.type == "cpu":
            self._check_label_values(labels)

    def _check_label_values(self, labels: Tensor) -> None:
        """Labels in ``[0, num_classes)``. CPU tensors only: on an accelerator, reading the range would stall
        every training step on a host-device synchronisation (an out-of-range label then fails in the scatter
        of the one-hot instead, with the device's own message)."""
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"{type(self).__name__} labels must lie in [0, {self.num_classes}), got min {int(labels.min())}, "
                f"max {int(labels.max())}: does num_classes match the data set?"
            )

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Cosine to each class centre, [B, K] (embeddings are assumed L2-normalised)."""
        return embeddings @ F.normalize(self.kernel, dim=0)

    def _one_hot(self, labels: Tensor, like: Tensor) -> Tensor:
        return torch.zeros_like(like).scatter_(1, labels.long().reshape(-1, 1), 1.0)


class AdaFace(_MarginHead):
    """AdaFace: quality-adaptive margin driven by the embedding norm (Kim et al., CVPR 2022).

    Parameter ``kernel`` [E, K] and buffers ``t``, ``batch_mean``, ``batch_std`` carry AdaFace's names, so a
    released checkpoint's ``head.*`` entries load into it. In training mode the EMA of the batch's norm mean
    and std is updated *before* it standardises the norms, as in AdaFace's ``head.py``; in eval mode the
    stored statistics are used unchanged.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
    ) -> None:
        super().__init__(embedding_size, num_classes, s)
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(
                f"AdaFace t_alpha (EMA weight of the new batch) must be in [0, 1], got {t_alpha}"
            )
        self.m = float(m)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.eps = float(eps)
        self.register_buffer("t", torch.zeros(1))  # unused by the forward; kept so checkpoints round-trip
        self.register_buffer("batch_mean", torch.ones(1) * 20.0)
        self.register_buffer("batch_std", torch.ones(1) * 100.0)

    def forward(self, embeddings: Tensor, norms: Tensor, labels: Tensor) -> Tensor:
        self._check(embeddings, norms, labels)
        cosine = self.cosine(embeddings).clamp(-1.0 + self.eps, 1.0 - self.eps)  # [B, K]; keeps acos finite
        safe_norms = norms.detach().clamp(0.001, 100.0)  # [B, 1]; the margin never backpropagates into norms

        if self.training:
            if safe_norms.shape[0] < 2:
                raise ValueError(
                    "AdaFace in training mode needs a batch of >= 2 samples to estimate the norm std"
                )
            with torch.no_grad():
                self.batch_mean.mul_(1.0 - self.t_alpha).add_(self.t_alpha * safe_norms.mean())
                self.batch_std.mul_(1.0 - self.t_alpha).add_(self.t_alpha * safe_norms.std())

        margin_scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps) * self.h  # [B, 1]
        margin_scaler = margin_scaler.clamp(-1.0, 1.0)
        one_hot = self._one_hot(labels, cosine)  # [B, K]

        g_angular = -self.m * margin_scaler  # [B, 1]
        theta = torch.acos(cosine)
        theta_m = (theta + one_hot * g_angular).clamp(self.eps, math.pi - self.eps)
        g_additive = self.m + self.m * margin_scaler  # [B, 1]
        return (torch.cos(theta_m) - one_hot * g_additive) * self.s


class ArcFace(_MarginHead):
    """ArcFace: s * cos(theta_y + m) at the label column, s * cos(theta_j) elsewhere. ``norms`` is ignored.

    theta + m is clipped to [eps, pi - eps] (as AdaFace does) so the target logit never rises again past pi.
    """

    def __init__(self, embedding_size: int, num_classes: int, m: float = 0.5, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)
        self.eps = 1e-3

    def forward(self, embeddings: Tensor, norms: Tensor | None, labels: Tensor) -> Tensor:
        self._check(embeddings, None, labels)
        cosine = self.cosine(embeddings).clamp(-1.0 + self.eps, 1.0 - self.eps)
        theta = torch.acos(cosine) + self.m * self._one_hot(labels, cosine)
        return torch.cos(theta.clamp(self.eps, math.pi - self.eps)) * self.s


class CosFace(_MarginHead):
    """CosFace: s * (cos(theta_y) - m) at the label column, s * cos(theta_j) elsewhere. ``norms`` is ignored."""

    def __init__(self, embedding_size: int, num_classes: int, m: float = 0.4, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, s)
        self.m = float(m)

    def forward(self, embeddings: Tensor, norms: Tensor | None, labels: Tensor) -> Tensor:
        self._check(embeddings, None, labels)
        cosine = self.cosine(embeddings)
        return (cosine - self.m * self._one_hot(labels, cosine)) * self.s
