"""The Ray actor that hosts one rank of a ``launcher=ray`` run on a node of the cluster.

It holds the rank's share of the cluster (CPUs, GPUs) and runs the rank as a child process,
``python -m lightning_accel.cli.rank <run_dir>/config.yaml``, the entry point every
launcher's ranks share, with the environment the driver gives it (torch elastic's
variables). The child dies with the actor (``PR_SET_PDEATHSIG``), so a killed actor leaves
no rank behind. Imported on the cluster's workers: no torch, no Ray at import time.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

# how long a rank may take to end after SIGTERM before it is killed
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the rank's child process, before it runs: ask the kernel to SIGKILL it when the
    actor's thread that started it exits (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RankHost:
    """One rank's place on the cluster: says where it is, runs the rank, stops it.

    Args:
        rank: the global rank it hosts (shown in Ray's log prefix and error messages).
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._process: subprocess.Popen | None = None
        self._started = threading.Event()

    def __repr__(self) -> str:
        return f"rank {self.rank}"  # Ray prefixes the rank's forwarded lines with it

    def place(self, marker: str) -> tuple[str, str, list[str], bool]:
        """This worker's node id, its address, the GPU ids Ray gave it, and whether it sees
        the file ``marker`` the driver wrote into the run directory."""
        import ray

        context = ray.get_runtime_context()
        gpus = [str(gpu) for gpu in context.get_accelerator_ids().get("GPU", [])]
        address = ray.util.get_node_ip_address()
        return context.get_node_id(), address, gpus, Path(marker).exists()

    def free_port(self) -> int:
        """A TCP port free on this worker's node now (rank 0's: the process group's store)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            return sock.getsockname()[1]

    def run(self, config_path: str, environment: dict[str, str | None], logs: str | None) -> int:
        """Run the rank to its end and return its exit code (negative: the signal that ended
        it). ``environment`` changes the actor's environment (None: removed); ``logs`` is the
        directory for its ``stdout.log`` and ``stderr.log``, None to print to the actor's
        own output (which Ray forwards to the driver)."""
        env = {**os.environ}
        for name, value in environment.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        command = [sys.executable, "-m", "lightning_accel.cli.rank", config_path]
        if logs is None:
            self._process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        else:
            Path(logs).mkdir(parents=True, exist_ok=True)
            with (
                open(Path(logs) / "stdout.log", "wb") as out,
                open(Path(logs) / "stderr.log", "wb") as err,
            ):
                self._process = subprocess.Popen(
                    command, env=env, stdout=out, stderr=err, preexec_fn=_die_with_parent
                )
        self._started.set()
        return self._process.wait()

    def stop(self) -> None:
        """End the rank: SIGTERM, then SIGKILL after :data:`STOP_GRACE_SECONDS` (a stopped
        or stuck rank ignores the first)."""
        if not self._started.is_set() or self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
