"""Multi-node DDP for real on one machine: two processes with distinct node ranks (one process per "node")
meet over TCP with gloo, given only the environment variables that torchrun or srun set on a cluster. They
train and validate into one run directory, and the validation they report equals a one-process evaluation
of the same final weights (pairs sharded across the nodes unevenly, per-pair scores gathered)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from launch_cli import PROBE, read_json, train_env

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="torch was built without gloo")

# 41 val pairs: node 0 scores 20, node 1 scores 21. 24 identities: 3 steps of 4 x 4 images per node.
VAL = [
    "val.sets.synthetic.num_pairs=41",
    "val.sets.synthetic.num_identities=16",
    "val.sets.synthetic_occluded.num_pairs=41",
    "val.sets.synthetic_occluded.num_identities=16",
    "data.val_batch_size=6",
    "data.num_workers=0",
]
RUN = [
    *VAL,
    "data.train.num_identities=24",
    "data.train.images_per_identity=4",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "trainer.strategy=ddp",
    "print_metrics=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(launcher: str, node: int, port: int) -> dict[str, str]:
    """What each launcher exports on node ``node`` of 2, one process per node."""
    if launcher == "torchrun":
        return {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(node),
            "GROUP_RANK": str(node),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "TORCHELASTIC_RUN_ID": "oaml-two-nodes",
        }
    # srun --nodes=2 --ntasks-per-node=1 (Lightning reads the main port from MASTER_PORT when it is set).
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "oaml",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(node),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(node),
        "MASTER_PORT": str(port),
    }


@pytest.mark.parametrize(
    ("launcher", "environment"), [("torchrun", "TorchElasticEnvironment"), ("srun", "SLURMEnvironment")]
)
def test_two_nodes_train_into_one_run_dir_and_validate_like_one_process(
    launcher: str, environment: str, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    port = _free_port()
    args = [*RUN, *PROBE, f"hydra.run.dir={run_dir}"]
    nodes = []
    for node in range(2):
        env = train_env(_node_env(launcher, node, port))
        for name in (
            "SLURM_JOB_ID",
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "LOCAL_RANK",
            "RANK",
            "TORCHELASTIC_RUN_ID",
        ):
            if name not in _node_env(launcher, node, port):
                env.pop(name, None)  # nothing of this test process's own environment leaks in
        out = (tmp_path / f"node{node}.out").open("w")
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "oaml.train", *args], cwd=tmp_path, env=env, stdout=out, stderr=out
            )
        )
    try:
        codes = [proc.wait(timeout=300) for proc in nodes]
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
    outputs = [(tmp_path / f"node{n}.out").read_text() for n in range(2)]
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)

    # The per-node rank mapping: node k is global rank k, node rank k, local rank 0, in one world of 2.
    for node in range(2):
        record = read_json(run_dir / f"world_rank{node}.json")
        assert record["cluster_environment"] == environment
        assert (record["global_rank"], record["node_rank"], record["local_rank"]) == (node, node, 0)
        assert (
            record["world_size"] == 2 and record["gathered_ranks"] == [0, 1] and record["sum_of_ones"] == 2.0
        )
    # One run directory: one metrics.json, one event file, written by node 0 only.
    assert [p.name for p in tmp_path.rglob("metrics.json")] == ["metrics.json"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    metrics = read_json(run_dir / "metrics.json")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == 3

    if launcher != "srun":
        return  # the ranks are the launcher-specific part; validation across nodes is checked once, below
    # Validation across the two nodes == one process scoring the same final weights.
    single = subprocess.run(
        [sys.executable, "-m", "oaml.evaluate", f"ckpt={checkpoint}", *VAL, "print_metrics=false",
         f"hydra.run.dir={tmp_path / 'one'}"],
        cwd=tmp_path, env=train_env({}), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    one = read_json(tmp_path / "one" / "metrics.json")
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    assert sorted(val) == sorted(one)
    assert val == pytest.approx(one, rel=1e-6, abs=1e-6)
