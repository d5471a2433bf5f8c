"""One all-reduce over a one-rank process group, in a process of its own: whether a backend
(NCCL on a GPU, gloo on the CPU) starts and reduces on this machine. ``verify`` runs it,
with a time limit, before the cells that train over that backend, so that a backend that
fails or hangs costs seconds instead of each of those cells' timeout.

    python -m lightning_accel.cli.collective_probe nccl cuda
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta

# the value every element of the reduced tensor holds: one rank sums it once
PROBE_VALUE = 3.0


def probe(backend: str, device_type: str, timeout_s: float = 60.0) -> dict[str, float]:
    """Start a one-rank ``backend`` process group, all-reduce a tensor on ``device_type``
    and read it back; the seconds each part took and the value read."""
    import torch
    import torch.distributed as dist

    started = time.perf_counter()
    store = dist.HashStore()
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    try:
        initialized = time.perf_counter()
        tensor = torch.full((1024,), PROBE_VALUE, device=device_type)
        dist.all_reduce(tensor)  # NCCL builds its communicator at the first collective
        value = float(tensor[0])  # reading it waits for the device
        return {
            "init_seconds": round(initialized - started, 3),
            "all_reduce_seconds": round(time.perf_counter() - initialized, 3),
            "value": value,
        }
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    """Print :func:`probe`'s figures as JSON; ``argv``: backend, device type."""
    backend, device_type = argv
    print(json.dumps(probe(backend, device_type)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
