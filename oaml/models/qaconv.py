"""QAConv local matching (QAConv 2.1 form) with optional occlusion weighting.

Reference: Shengcai Liao and Ling Shao, "Interpretable and Generalizable Person Re-Identification with
Query-Adaptive Convolution and Temporal Lifting", ECCV 2020, and "Graph Sampling Based Deep Metric Learning for
Generalizable Person Re-Identification", CVPR 2022 (QAConv 2.x). Checked against ShengcaiLiao/QAConv
``reid/models/qaconv.py`` (V1.3.1, July 2021, the 2.1 release):

- correlation ``einsum('p c s, g c r -> p g r s')`` of probe map P (locations s) and gallery map G (locations r);
- max over r (one value per probe location) and max over s (one per gallery location), concatenated;
- ONE ``BatchNorm1d(1)`` over all pooled values of both directions together (input viewed as ``[N, 1, hw]``);
- ONE ``Linear(hw, 1)`` (weight filled with 1/hw, default bias init) applied to each direction's ``hw`` terms,
  the two outputs summed (so the bias counts twice);
- a logit ``BatchNorm1d(1)`` on the summed score; output ``[P, G]``.
- The reference L2-normalises each location over channels in the backbone (``F.normalize`` at the end of
  ``resmap.py``); here it is done inside QAConv (idempotent), so callers may pass raw feature maps.

Occlusion weighting (not in the reference; OAML's addition). ``v_p[s]``, ``v_g[r]`` in [0, 1] are the probe
and gallery visibility (1 = visible) as the OcclusionHead predicts them, ``c = <G[:, r], P[:, s]>`` in [-1, 1].
Probe visibility belongs to probe locations s, gallery visibility to gallery locations r.

- ``none``:    ``c' = c``; visibility is ignored.
- ``product``: ``c' = v_p[s] * v_g[r] * c``. Bilinear, so it is computed exactly by scaling ``P[:, s]`` by
  ``v_p[s]`` and ``G[:, r]`` by ``v_g[r]`` before the correlation. A hidden correlation becomes 0, which can
  still win a max against negative cosines.
- ``mask``:    ``c' = w * c + (1 - w) * (-1) = w * (c + 1) - 1`` with ``w = v_p[s] * v_g[r]``: a hidden
  correlation is pushed to -1, the smallest possible cosine, so it cannot beat a visible one. Computed with one
  correlation of augmented features ``v_p[s] * [P[:, s]; 1]`` and ``v_g[r] * [G[:, r]; 1]`` (an appended
  constant channel gives the ``+1``); the ``-1`` commutes with the max and is applied to the pooled values.
- ``pooled``:  as ``mask``; in addition each pooled term is weighted by the visibility of its own location
  and renormalised by the total visibility of that map, after the BatchNorm and before the fc:
  ``t_s' = BN(t_s) * v_p[s] * hw / sum(v_p)`` for the probe-location terms and likewise with ``v_g`` for the
  gallery-location terms. With the fc's initial weights 1/hw this is a visibility-weighted mean, so a face
  with half its locations hidden is not scored lower for that alone. A map with no visible location
  contributes only the fc bias. The first BatchNorm still takes its statistics over all pooled values, the
  hidden ones (at -1) included, as in ``mask``.

- ``covisible``: a location is *hidden* when its visibility is below 0.5; a correlation involving a hidden
  location is set to -1 (so it cannot win a max and the occluder's own features never enter the score), every
  other correlation is left exactly as in ``none``: a soft visibility of 0.9 on a clean face does not shrink
  its correlations, which QAConv's BatchNorm was calibrated on (the soft ``mask`` fold shifts them by
  ``(1 - w)(c + 1)``, several BatchNorm standard deviations: measured, a ``none``-trained model scored that way
  falls from 0.93 to 0.76 on clean pairs). After the BatchNorm, the pooled terms of every location ``l`` that
  is hidden in either face (both directions; faces are aligned, so ``l`` is the same part of both) are set to
  0, so they add nothing to the fc's sum: missing evidence counts as neutral instead of as the -1 of a hidden
  maximum. With ``covisible_average`` the remaining terms are also renormalised to a mean over the co-visible
  locations (``* hw / n_covisible``), so a pair is not scored lower just because half of one face is hidden. Measured
  with true masks on a ``none``-trained model (experiments/occlusion_awareness), the plain sum beat the
  average (an average over a few cells is noisy and impostors profit), so the sum is the default. With no
  hidden location it equals ``none`` (to float rounding), so clean pairs keep their ``none`` scores. The
  co-visibility weights are hard (0/1): soft weights on the -1 terms of hidden cells leak large negative
  values into the score. Hard thresholds pass no gradient to the visibility maps.

No mode builds a ``[P, G, hw, hw]`` weight tensor: visibility is folded into the features (the only
``[P, G, hw, hw]`` tensor is the correlation itself, as in unweighted QAConv) or into the ``[P, G, hw]``
pooled terms. ``benchmarks/qaconv.py`` measures the memory against a naive weight-tensor version.

Gradient isolation (which losses may update the backbone, the occlusion head or the visibility fed to QAConv,
e.g. detaching the visibility maps) is decided by the training code, not here: this module passes gradients to
the features and to the visibility maps it receives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTINGS = ("none", "product", "mask", "pooled", "covisible")

# covisible: a location below this visibility is hidden (excluded from the correlation maxima).
VISIBLE_THRESHOLD = 0.5

# Smallest total visibility used to renormalise ``pooled`` terms (a fully hidden map then scores from the bias).
_MIN_TOTAL_VISIBILITY = 1e-6


class QAConv(nn.Module):
    """Query-adaptive convolution matcher: ``[P, C, H, W]`` x ``[G, C, H, W]`` feature maps -> ``[P, G]`` logits.

    Args:
        num_features: channels C of the feature maps.
        height, width: spatial size of the feature maps (7 x 7 for a 112 x 112 IResNet).
        weighting: how visibility maps enter the correlation; one of ``WEIGHTINGS`` (see the module docstring).
        covisible_average: ``covisible`` only: average the co-visible terms instead of summing them.
    """

    def __init__(
        self,
        num_features: int,
        height: int,
        width: int,
        weighting: str = "none",
        covisible_average: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("num_features", num_features), ("height", height), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"QAConv: {name} must be a positive int, got {value!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"QAConv: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.num_features = num_features
        self.height = height
        self.width = width
        self.weighting = weighting
        self.covisible_average = bool(covisible_average)
        self.bn = nn.BatchNorm1d(1)
        self.fc = nn.Linear(height * width, 1)
        self.logit_bn = nn.BatchNorm1d(1)
        self.reset_parameters()

    @property
    def hw(self) -> int:
        return self.height * self.width

    def reset_parameters(self) -> None:
        """BatchNorms to identity, fc weight to 1/hw (a plain mean of the pooled terms), default fc bias."""
        self.bn.reset_parameters()
        self.logit_bn.reset_parameters()
        self.fc.reset_parameters()
        with torch.no_grad():
            self.fc.weight.fill_(1.0 / self.hw)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, height={self.height}, width={self.width}, " + (
            f"weighting={self.weighting!r}, covisible_average={self.covisible_average}"
        )

    # ----------------------------------------------------------------------------------------------- public API

    def forward(
        self,
        prob_fea: Tensor,
        gal_fea: Tensor | None = None,
        prob_occ: Tensor | None = None,
        gal_occ: Tensor | None = None,
    ) -> Tensor:
        """All-pairs logits ``[P, G]``; ``gal_fea=None`` matches the probes with themselves (training).

        Visibility maps are ``[B, 1, H, W]`` in [0, 1]; a missing one counts as all visible (and all are ignored
        when ``weighting == "none"``). In self-matching, ``prob_occ`` serves both sides.
        """
        probe, probe_vis = self._prepare(prob_fea, prob_occ, "prob_fea", "prob_occ")
        if gal_fea is None:
            if gal_occ is not None:
                raise ValueError(
                    "QAConv.forward: gal_occ given without gal_fea; pass gal_fea too, or drop gal_occ"
                )
            gallery, gallery_vis = probe, probe_vis
        else:
            gallery, gallery_vis = self._prepare(gal_fea, gal_occ, "gal_fea", "gal_occ")
        pooled = self._pooled_all_pairs(probe, gallery, probe_vis, gallery_vis)
        return self._head(pooled, _unsqueeze(probe_vis, 1), _unsqueeze(gallery_vis, 0))

    def match(
        self,
        probe_features: Tensor,
        gallery_features: Tensor,
        probe_occ: Tensor | None = None,
        gallery_occ: Tensor | None = None,
        probe_chunk: int = 64,
        gallery_chunk: int = 256,
    ) -> Tensor:
        """``[P, G]`` logits of large sets, computed in blocks of ``probe_chunk x gallery_chunk`` pairs.

        Peak extra memory is about ``probe_chunk * gallery_chunk * hw^2`` floats (64 x 256 x 49^2 x 4 B
        = 150 MiB). Evaluation only (eval mode: BatchNorm must not take statistics per block). Runs in the
        caller's grad mode: wrap it in ``torch.inference_mode()`` for large sets.
        """
        self._require_eval("match")
        for name, value in (("probe_chunk", probe_chunk), ("gallery_chunk", gallery_chunk)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"QAConv.match: {name} must be a positive int, got {value!r}")
        probe, probe_vis = self._prepare(probe_features, probe_occ, "probe_features", "probe_occ")
        gallery, gallery_vis = self._prepare(gallery_features, gallery_occ, "gallery_features", "gallery_occ")
        _check_visibility_values(probe_vis, "probe_occ")
        _check_visibility_values(gallery_vis, "gallery_occ")
        rows = []
        for p0 in range(0, probe.shape[0], probe_chunk):
            p_sl = slice(p0, p0 + probe_chunk)
            p_vis = _slice(probe_vis, p_sl)
            blocks = []
            for g0 in range(0, gallery.shape[0], gallery_chunk):
                g_sl = slice(g0, g0 + gallery_chunk)
                g_vis = _slice(gallery_vis, g_sl)
                pooled = self._pooled_all_pairs(probe[p_sl], gallery[g_sl], p_vis, g_vis)
                blocks.append(self._head(pooled, _unsqueeze(p_vis, 1), _unsqueeze(g_vis, 0)))
            rows.append(torch.cat(blocks, dim=1))
        return torch.cat(rows, dim=0)

    def pair_scores(
        self, a: Tensor, b: Tensor, a_occ: Tensor | None = None, b_occ: Tensor | None = None
    ) -> Tensor:
        """Logits ``[N]`` of the matched pairs ``a[i]`` (probe) vs ``b[i]`` (gallery): the diagonal of
        ``match(a, b)`` (to float rounding) in ``O(N * hw^2)`` time and memory. Evaluation only (eval mode).
        """
        self._require_eval("pair_scores")
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"QAConv.pair_scores: a and b must hold the same number of maps, got {a.shape[0]} "
                f"and {b.shape[0]}"
            )
        probe, probe_vis = self._prepare(a, a_occ, "a", "a_occ")
        gallery, gallery_vis = self._prepare(b, b_occ, "b", "b_occ")
        _check_visibility_values(probe_vis, "a_occ")
        _check_visibility_values(gallery_vis, "b_occ")
        probe_flat, gallery_flat = self._fold(probe, probe_vis), self._fold(gallery, gallery_vis)
        corr = torch.bmm(probe_flat, gallery_flat.transpose(1, 2))  # [N, s, r]
        per_probe_loc = corr.max(dim=2).values  # [N, s]
        per_gallery_loc = corr.max(dim=1).values  # [N, r]
        pooled = torch.stack((per_probe_loc, per_gallery_loc), dim=1) - self._offset  # [N, 2, hw]
        return self._head(pooled, probe_vis, gallery_vis)

    # ---------------------------------------------------------------------------------------------- internals

    def _prepare(
        self, features: Tensor, visibility: Tensor | None, feat_name: str, vis_name: str
    ) -> tuple[Tensor, Tensor | None]:
        """Check shapes; L2-normalise each location; return ``[B, hw, C]`` maps and ``[B, hw]`` visibility."""
        expected = (self.num_features, self.height, self.width)
        if features.dim() != 4 or tuple(features.shape[1:]) != expected:
            raise ValueError(
                f"QAConv: {feat_name} must have shape [B, {', '.join(map(str, expected))}], "
                f"got {list(features.shape)}"
            )
        maps = F.normalize(features, dim=1).flatten(2).transpose(1, 2)  # [B, hw, C]
        if self.weighting == "none" or visibility is None:
            return maps, None
        expected_vis = (features.shape[0], 1, self.height, self.width)
        if tuple(visibility.shape) != expected_vis:
            raise ValueError(
                f"QAConv: {vis_name} must have shape [{', '.join(map(str, expected_vis))}] "
                f"(one visibility map per feature map), got {list(visibility.shape)}"
            )
        return maps, visibility.flatten(1).to(maps.dtype)

    @property
    def _offset(self) -> float:
        """What the folded correlation exceeds the weighted one by (the ``+1`` of the appended channel)."""
        return 0.0 if self.weighting in ("none", "product") else 1.0

    def _fold(self, maps: Tensor, visibility: Tensor | None) -> Tensor:
        """``[B, hw, C']`` maps whose plain correlation with another folded map, minus ``_offset``, is the
        weighted correlation (see the module docstring)."""
        if self.weighting == "none":
            return maps
        if self.weighting == "product":
            return _scale(maps, visibility)
        if self.weighting == "covisible":
            # The same fold with 0/1 visibility: c, or -1 where either location is hidden.
            visibility = _visible(visibility)
        # mask / pooled / covisible: v_p v_g (c + 1) - 1 via an appended constant channel, v * [x; 1] built as
        # [v * x; v]: one new [B, hw, C + 1] tensor (the product is freed at once; cat saves nothing).
        if visibility is None:
            return _append_one(maps)
        weight = visibility.unsqueeze(-1)
        return torch.cat((maps * weight, weight), dim=-1)

    def _pooled_all_pairs(
        self, probe: Tensor, gallery: Tensor, probe_vis: Tensor | None, gallery_vis: Tensor | None
    ) -> Tensor:
        """Pooled correlations ``[P, G, 2, hw]``: ``[..., 0, s] = max_r c'``, ``[..., 1, r] = max_s c'``."""
        num_p, num_g, hw = probe.shape[0], gallery.shape[0], self.hw
        probe_flat = self._fold(probe, probe_vis).reshape(num_p * hw, -1)
        if gallery is probe and gallery_vis is probe_vis:
            # Self-matching (training): one folded, flattened copy serves both sides of the product.
            gallery_flat = probe_flat
        else:
            gallery_flat = self._fold(gallery, gallery_vis).reshape(num_g * hw, -1)
        # One matrix product, no permuted copy: corr[p, s, g, r] = score[p, g, r, s] = <G[g, :, r], P[p, :, s]>.
        corr = torch.mm(probe_flat, gallery_flat.t()).view(num_p, hw, num_g, hw)
        # max(dim) keeps only indices for backward (amax would keep the whole [P, s, G, r] input alive).
        per_probe_loc = corr.max(dim=3).values.transpose(1, 2)  # [P, G, s]
        per_gallery_loc = corr.max(dim=1).values  # [P, G, r]
        pooled = torch.stack((per_probe_loc, per_gallery_loc), dim=2)
        # In place: the offset would otherwise cost another [P, G, 2, hw] (stack's backward needs no output).
        return pooled.sub_(self._offset) if self._offset else pooled

    def _head(self, pooled: Tensor, probe_vis: Tensor | None, gallery_vis: Tensor | None) -> Tensor:
        """BN over pooled terms -> (pooled weighting) -> shared fc on both directions, summed -> logit BN.

        ``pooled`` is ``[..., 2, hw]``; the visibilities broadcast against ``pooled[..., 0, :]``.
        """
        lead = pooled.shape[:-2]
        normed = self.bn(pooled.reshape(-1, 1, self.hw)).view(*lead, 2, self.hw)
        per_probe_loc, per_gallery_loc = normed.unbind(dim=-2)
        if self.weighting == "pooled":
            per_probe_loc = per_probe_loc * _location_weights(probe_vis, self.hw)
            per_gallery_loc = per_gallery_loc * _location_weights(gallery_vis, self.hw)
        elif self.weighting == "covisible":
            weights = _covisibility(_visible(probe_vis), _visible(gallery_vis))
            if weights is not None:  # None: no map on either side, nothing hidden
                if self.covisible_average:
                    weights = _location_weights(weights, self.hw)
                per_probe_loc = per_probe_loc * weights
                per_gallery_loc = per_gallery_loc * weights
        score = self.fc(per_probe_loc) + self.fc(per_gallery_loc)  # [..., 1]
        return self.logit_bn(score.reshape(-1, 1)).view(lead)

    def _require_eval(self, method: str) -> None:
        if self.training:
            raise RuntimeError(
                f"QAConv.{method} is for evaluation: call .eval() first (in training mode BatchNorm would "
                "normalise each block with its own batch statistics); train with forward()."
            )


def _append_one(maps: Tensor) -> Tensor:
    return torch.cat((maps, maps.new_ones(*maps.shape[:-1], 1)), dim=-1)


def _scale(maps: Tensor, visibility: Tensor | None) -> Tensor:
    return maps if visibility is None else maps * visibility.unsqueeze(-1)


def _location_weights(visibility: Tensor | None, hw: int) -> Tensor | float:
    """``v * hw / sum(v)``: visibility weights whose mean over the map is 1 (1.0 when there is no map)."""
    if visibility is None:
        return 1.0
    total = visibility.sum(dim=-1, keepdim=True).clamp_min(_MIN_TOTAL_VISIBILITY)
    return visibility * (hw / total)


def _visible(visibility: Tensor | None) -> Tensor | None:
    """0/1 map: 1 where the location counts as visible (``>= VISIBLE_THRESHOLD``)."""
    return None if visibility is None else (visibility >= VISIBLE_THRESHOLD).to(visibility.dtype)


def _covisibility(probe_vis: Tensor | None, gallery_vis: Tensor | None) -> Tensor | None:
    """``v_p * v_g`` per location (broadcast over pairs); a missing map counts as all visible."""
    if probe_vis is None or gallery_vis is None:
        return gallery_vis if probe_vis is None else probe_vis
    return probe_vis * gallery_vis


def _unsqueeze(visibility: Tensor | None, dim: int) -> Tensor | None:
    return None if visibility is None else visibility.unsqueeze(dim)


def _slice(visibility: Tensor | None, sl: slice) -> Tensor | None:
    return None if visibility is None else visibility[sl]


def _check_visibility_values(visibility: Tensor | None, name: str) -> None:
    if visibility is None:
        return
    if not torch.isfinite(visibility).all():
        raise ValueError(f"QAConv: {name} contains NaN or inf; visibility must be finite values in [0, 1]")
    if visibility.numel() and (visibility.min() < 0 or visibility.max() > 1):
        raise ValueError(
            f"QAConv: {name} must lie in [0, 1] (1 = visible), got range "
            f"[{visibility.min().item():.4g}, {visibility.max().item():.4g}]"
        )
