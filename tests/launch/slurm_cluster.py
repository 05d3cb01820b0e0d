"""A real one-node SLURM cluster for the launcher tests: munged, slurmctld and slurmd of the Debian packages
(slurm 22.05, munge 0.5.15), started with every file in one temporary folder and stopped again.

Installs nothing: CI runs ``.ci/install-slurm`` first. Without the binaries the tests that need the cluster
skip, unless ``OAML_REQUIRE_SLURM=1`` (CI sets it): then they fail, so a CI image that lost SLURM cannot pass
by skipping. The daemons need root (SlurmUser/SlurmdUser root, munged with a root-owned key).

The daemons run in the foreground as children of the test process, so that stopping them can wait for
each to exit. Ports are picked free at start, so the cluster never meets another one on this machine; clients
find it through ``SLURM_CONF`` (``SlurmCluster.env``), and slurm finds its munged through ``AuthInfo=socket=``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo")
# Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def missing_reason() -> str | None:
    """Why this machine cannot start the cluster, or None."""
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return f"SLURM binaries not found ({', '.join(missing)}): run .ci/install-slurm"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster runs its daemons as root; these tests run as another user"
    return None


def skip_or_fail_without_slurm() -> None:
    """Skip (or, with OAML_REQUIRE_SLURM=1, fail) when the cluster cannot start here."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("OAML_REQUIRE_SLURM") == "1":
        pytest.fail(f"OAML_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This machine as slurmd sees it (CPUs, sockets, cores, threads), named localhost, with memory below
    the measured amount (a node that reports less memory than slurm.conf promises is drained)."""
    probe = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in probe.splitlines() if line.startswith("NodeName="))
    memory = int(re.search(r"RealMemory=(\d+)", line).group(1))
    line = re.sub(r"RealMemory=\d+", f"RealMemory={max(memory * 9 // 10, 1)}", line)
    return re.sub(r"^NodeName=\S+", "NodeName=localhost", line)


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs_open: list = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def write_config(self) -> None:
        munge = self.root / "munge"
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=oamltest",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={munge / 'munge.socket'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "SwitchType=switch/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "SelectType=select/cons_tres",
                    # Every hardware thread is a CPU: two one-CPU jobs run side by side on a 2-CPU machine.
                    "SelectTypeParameters=CR_CPU",
                    "ReturnToService=2",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
                    _node_line(),
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start_munged(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._start_daemon(
            "munged",
            [
                "--foreground",
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._wait_until("munged's socket", lambda: (munge / "munge.socket").exists())

    def _start_daemon(self, daemon: str, args: list[str]) -> None:
        """Start a daemon in the foreground, as a child of this process, so that stop() can wait for it."""
        log = open(self.root / "log" / f"{daemon}.out", "wb")  # noqa: SIM115 (closed in stop())
        self.logs_open.append(log)
        self.daemons[daemon] = subprocess.Popen(
            [_which(daemon), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def _wait_until(self, what: str, ready, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = [name for name, proc in self.daemons.items() if proc.poll() is not None]
            if exited:
                raise RuntimeError(f"{', '.join(exited)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"no {what} after {timeout} s:\n{self.logs()}")

    def start(self) -> None:
        """munged, then slurmctld and slurmd; returns once the node is idle (accepting jobs)."""
        # munged refuses a socket whose path is not traversable by everyone.
        self.root.chmod(0o755)
        (self.root / "log").mkdir()
        self._start_munged()
        self.write_config()
        self.env = {"SLURM_CONF": str(self.conf), "PATH": SEARCH_PATH}
        self._start_daemon("slurmctld", ["-D", "-f", str(self.conf)])
        # The node is named localhost in slurm.conf, whatever this machine's hostname is.
        self._start_daemon("slurmd", ["-D", "-f", str(self.conf), "-N", "localhost"])
        self._wait_until("idle node", lambda: self.slurm("sinfo", "-h", "-o", "%T") == "idle")

    def slurm(self, command: str, *args: str) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        result = subprocess.run(
            [_which(command), *args], env={**os.environ, **self.env}, capture_output=True, text=True
        )
        return result.stdout.strip()

    def logs(self) -> str:
        files = sorted(self.root.glob("*/*.log")) + sorted(self.root.glob("log/*.out"))
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in files)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until no job is left, cancelling what still runs after half the time. (Submitit returns
        once the results are written, while srun and the batch step may still be finishing.)"""
        deadline = time.monotonic() + timeout
        cancelled = False
        while self.slurm("squeue", "-h", "-o", "%i"):
            if not cancelled and time.monotonic() > deadline - timeout / 2:
                self.slurm("scancel", "--full", "--partition=debug")
                cancelled = True
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs left after {timeout} s:\n{self.slurm('squeue')}\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every daemon started here, slurmd first, each waited for until it has exited (a munged
        still exiting breaks the next start)."""
        try:
            if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
                self.drain()
        finally:
            for daemon in ("slurmd", "slurmctld", "munged"):
                proc = self.daemons.pop(daemon, None)
                if proc is None:
                    continue
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            for log in self.logs_open:
                log.close()
            self.logs_open.clear()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster (partition ``debug``) for the session; stopped and deleted afterwards."""
    skip_or_fail_without_slurm()
    # Not under pytest's tmp dir: munged needs every folder of its socket path traversable by everyone.
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="oaml-slurm-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
