"""Impostor score normalisation: put the AdaFace cosine and the QAConv logit on one scale before fusing them.

A cosine lives in [-1, 1] and a QAConv logit is unbounded; a fixed weighted sum of the cosine and the sigmoid of
the logit (the earlier fused score) lets whichever branch has the larger spread decide, and the sigmoid
saturates. Z-normalisation against impostors is the standard remedy in biometrics (Auckenthaler et al.,
"Score normalization for text-independent speaker verification systems", DSP 2000): each score becomes "how
many impostor standard deviations above a typical impostor", a unit both branches share. The impostor
statistics come from *training* batches (pairs of different training identities, which every identity-balanced
batch holds by the thousand), so nothing is fitted on the pairs that are evaluated. Impostor scores of unseen
people look like impostor scores of training people far more than genuine scores do (genuine training pairs are
what the losses pull together), which is why only impostors are used.

The statistics are buffers: they travel in checkpoints and DDP broadcasts rank 0's with the other buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Exponential moving average factor per update: about the last 1 / momentum training steps count.
DEFAULT_MOMENTUM = 0.05
_MIN_STD = 1e-6


class ImpostorScoreNorm(nn.Module):
    """Running mean and standard deviation of impostor scores, one pair per score name.

    Args:
        names: the scores it normalises (e.g. ``("adaface", "qaconv")``).
        momentum: weight of each new batch in the running statistics; the first batch sets them.
    """

    def __init__(
        self, names: tuple[str, ...] = ("adaface", "qaconv"), momentum: float = DEFAULT_MOMENTUM
    ) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"ImpostorScoreNorm momentum must lie in (0, 1], got {momentum}")
        self.names = tuple(names)
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(len(self.names)))
        self.register_buffer("var", torch.ones(len(self.names)))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def ready(self) -> bool:
        """Whether any statistics have been gathered (an untrained model's are meaningless)."""
        return bool(self.num_updates > 0)

    @torch.no_grad()
    def update(self, scores: dict[str, Tensor], impostor: Tensor) -> None:
        """Fold one batch in: ``scores[name]`` and the boolean ``impostor`` mask have the same shape.

        A batch without impostors changes nothing. Masked sums instead of boolean indexing and a branch on
        ``impostor.any()``: both would read a value on the host, a host-device synchronisation every training
        step on an accelerator.
        """
        weight = impostor.float()
        count = weight.sum()
        has_impostors = count > 0
        count = count.clamp_min(1.0)
        first = self.num_updates == 0
        m = torch.where(first, torch.ones_like(count), torch.full_like(count, self.momentum))
        m = torch.where(has_impostors, m, torch.zeros_like(m))
        for index, name in enumerate(self.names):
            values = scores[name].detach().float()
            mean = (values * weight).sum() / count
            var = ((values - mean).square() * weight).sum() / count
            self.mean[index] = (1 - m) * self.mean[index] + m * mean
            self.var[index] = (1 - m) * self.var[index] + m * var
        self.num_updates += has_impostors.long()

    def normalize(self, name: str, scores: Tensor) -> Tensor:
        """``(score - impostor mean) / impostor std`` for score ``name``."""
        if name not in self.names:
            raise KeyError(f"ImpostorScoreNorm holds statistics for {self.names}, not {name!r}")
        index = self.names.index(name)
        return (scores - self.mean[index]) / self.var[index].clamp_min(_MIN_STD**2).sqrt()

    def extra_repr(self) -> str:
        return f"names={self.names}, momentum={self.momentum}"
