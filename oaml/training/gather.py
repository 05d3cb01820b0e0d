"""Gather small per-item tensors from every rank, keyed by an item index.

Only per-pair scores and per-image visibility statistics travel (a few floats each), never feature maps.
Ranks may hold different numbers of items: each pads to the largest count, all-gathers, drops the padding,
and the result is sorted by index so that every rank, and every world size, sees the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_padded(tensor: Tensor, size: int) -> list[Tensor]:
    world_size = dist.get_world_size()
    padded = tensor.new_zeros((size, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    chunks = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(chunks, padded)
    return chunks


def gather_by_index(index: Tensor, values: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """All ranks' (index, values), sorted by index. Duplicated indices are an error: they mean a sharding bug."""
    if _distributed():
        count = torch.tensor([index.shape[0]], device=index.device)
        counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        largest = max(sizes)
        index = torch.cat([c[:n] for c, n in zip(_all_gather_padded(index, largest), sizes)])
        values = {
            key: torch.cat([c[:n] for c, n in zip(_all_gather_padded(value, largest), sizes)])
            for key, value in values.items()
        }
    order = torch.argsort(index)
    index = index[order]
    if index.numel() > 1 and bool((index[1:] == index[:-1]).any()):
        raise RuntimeError("the same validation item (pair or face) was scored twice; the sharding is broken")
    return index, {key: value[order] for key, value in values.items()}
