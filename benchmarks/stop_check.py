"""What learning of a SIGTERM costs each training step of a 2-rank run on gloo: Lightning's
own check (rank 0's flag broadcast from the device, read with ``.item()``) against
:class:`~lightning_accel.strategies.agreed_stop.AgreedStop` (an asynchronous MAX all-reduce
on a gloo group, read a step later). Each rank makes ``--steps`` checks of each kind, with
``--work-ms`` of other work between two checks as a training step would have; the figure is
the median time the check keeps the training thread, per repeat.

    python benchmarks/stop_check.py --repeats 3 --json docs/results/stop_check.json

On a GPU Lightning's ``.item()`` also waits for every kernel queued before it, which this CPU
benchmark cannot show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import results_table
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from rich.console import Console

from lightning_accel.strategies.agreed_stop import AgreedStop

RANKS = 2


def _fake_trainer() -> Any:
    """The attributes of a trainer the two checks read."""
    loop = SimpleNamespace()
    trainer = SimpleNamespace(
        received_sigterm=False,
        strategy=SimpleNamespace(root_device=torch.device("cpu"), launcher=None),
        _signal_connector=SimpleNamespace(_original_handlers={}, received_sigterm=False),
        fit_loop=SimpleNamespace(epoch_loop=loop),
        global_rank=dist.get_rank(),
        state=SimpleNamespace(status=None),
    )
    loop.trainer = trainer
    return trainer


def _median_ms(check: Any, steps: int, work_ms: float) -> float:
    times = []
    for _ in range(steps):
        time.sleep(work_ms / 1000)
        started = time.perf_counter()
        check()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _rank(rank: int, port: int, steps: int, work_ms: float, output: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    trainer = _fake_trainer()
    lightning = _median_ms(
        lambda: _TrainingEpochLoop._broadcast_sigterm_tensor(trainer.fit_loop.epoch_loop),
        steps,
        work_ms,
    )
    agreed = AgreedStop(trainer, timeout_s=60)
    ours = _median_ms(agreed.check, steps, work_ms)
    agreed.close()
    if rank == 0:
        Path(output).write_text(json.dumps({"lightning_ms": lightning, "agreed_stop_ms": ours}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--work-ms", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    repeats = []
    for repeat in range(args.repeats):
        output = Path(f"/tmp/stop_check_{os.getpid()}_{repeat}.json")
        port = 29500 + os.getpid() % 1000 + repeat
        mp.spawn(_rank, (port, args.steps, args.work_ms, str(output)), nprocs=RANKS)
        repeats.append(json.loads(output.read_text()))
        output.unlink()
    table = results_table("per-step SIGTERM check, 2 ranks on gloo", ("check", "median ms"))
    for key, name in (("lightning_ms", "Lightning"), ("agreed_stop_ms", "AgreedStop")):
        cells = ", ".join(f"{r[key]:.3f}" for r in repeats)
        table.add_row(name, cells)
    Console().print(table)
    if args.json:
        result = {"command": " ".join(sys.argv), "work_ms": args.work_ms, "steps": args.steps}
        args.json.write_text(json.dumps({**result, "repeats": repeats}, indent=2) + "\n")


if __name__ == "__main__":
    main()
