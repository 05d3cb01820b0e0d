"""gather_by_index across real gloo processes: uneven shards, padding dropped, order restored."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oaml.data.pipeline.pair_sharding import PairShardSampler
from oaml.training.gather import gather_by_index

NUM_PAIRS = 11


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pairs = torch.tensor(list(PairShardSampler(NUM_PAIRS, world, rank))[0::2]) // 2
        # Reverse the local order: the gathered result must still come back sorted by pair index.
        pairs = pairs.flip(0)
        index, values = gather_by_index(
            pairs, {"score": pairs.float() * 0.5, "maps": pairs[:, None].repeat(1, 3)}
        )
        results[rank] = (index.tolist(), values["score"].tolist(), values["maps"].tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_gather_over_gloo_matches_single_process(world: int) -> None:
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_worker, args=(world, _free_port(), results), nprocs=world, start_method="spawn")
    expected = list(range(NUM_PAIRS))
    for rank in range(world):
        index, score, maps = results[rank]
        assert index == expected
        assert score == [0.5 * i for i in expected]
        assert maps == [[i] * 3 for i in expected]


def test_duplicate_indices_are_an_error() -> None:
    with pytest.raises(RuntimeError, match="sharding is broken"):
        gather_by_index(torch.tensor([0, 1, 1]), {"x": torch.zeros(3)})
