"""Does a restarted run lose anything? For each hardware profile, an uninterrupted run and
POINTS runs under ``launcher=torchrun`` with one restart, each killing one rank (SIGKILL)
at a point and step chosen by SEED (inside a training step, in validation, while a
checkpoint is written, while a batch is loaded, right after a save). Every run must
finish with the uninterrupted run's weights (fp32, 1e-6); the table gives each point's
restarts and the seconds it lost against the uninterrupted run.

    python benchmarks/fault_matrix.py --seed 0 --points 10 --json docs/results/fault_matrix.json
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

from common import results_table, run_cli
from rich.console import Console

from lightning_accel.callbacks.fault_injection import KillRank, fault_schedule
from lightning_accel.checkpoints import run_weights

# a tiny GPT, a global batch of 8 over 2 ranks, 24 steps in epochs of 8 batches; validation
# and a checkpoint every 4 steps; batches loaded in the training process
RUN = [
    "model.n_layer=1",
    "model.d_model=32",
    "model.n_head=2",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=24",
    "trainer.limit_train_batches=8",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=2",
    "callbacks=minimal",
    "logger=none",
]
MAX_STEPS = 24
RANKS = 2
TOLERANCE = 1e-6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fault_overrides(fault: KillRank, run_id: str) -> list[str]:
    """The overrides that run under torchrun with one restart and inject ``fault``."""
    target = f"{KillRank.__module__}.{KillRank.__name__}"
    return [
        "launcher=torchrun",
        "launcher.max_restarts=1",
        f"launcher.run_id={run_id}",
        f"launcher.rdzv_endpoint=127.0.0.1:{_free_port()}",
        f"+callbacks.fault._target_={target}",
        f"+callbacks.fault.point={fault.point}",
        f"+callbacks.fault.step={fault.step}",
        f"+callbacks.fault.rank={fault.rank}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--hardware", default="ddp_cpu,fsdp2_cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for hardware in options.hardware.split(","):
            base = [*RUN, f"hardware={hardware}", f"hardware.devices={RANKS}"]
            reference_dir = Path(scratch) / hardware / "uninterrupted"
            reference = run_cli(base, reference_dir)
            expected = run_weights(reference_dir)
            schedule = fault_schedule(options.seed, options.points, MAX_STEPS, RANKS)
            for number, fault in enumerate(schedule):
                run_dir = Path(scratch) / hardware / f"point-{number}"
                started = time.perf_counter()
                summary = run_cli([*base, *fault_overrides(fault, f"p{number}")], run_dir)
                wall = time.perf_counter() - started
                weights = run_weights(run_dir)
                difference = max((weights[k] - expected[k]).abs().max().item() for k in expected)
                rows.append(
                    {
                        "hardware": hardware,
                        "point": fault.point,
                        "step": fault.step,
                        "rank": fault.rank,
                        "steps": summary["steps"],
                        "restarts": summary["restarts"],
                        "lost_seconds": round(wall - reference["command_seconds"], 1),
                        "max_weight_difference": difference,
                        "same_weights": difference <= TOLERANCE and summary["steps"] == MAX_STEPS,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    table = results_table(
        f"Fault matrix (seed {options.seed}): one rank killed, one restart",
        ("hardware", "point", "step", "rank", "restarts", "lost s", "max |Δw|", "same weights"),
    )
    for row in rows:
        table.add_row(
            row["hardware"],
            row["point"],
            str(row["step"]),
            str(row["rank"]),
            str(row["restarts"]),
            f"{row['lost_seconds']:.1f}",
            f"{row['max_weight_difference']:.1e}",
            "yes" if row["same_weights"] else "NO",
        )
    Console().print(table)
    if options.json:
        options.json.write_text(json.dumps({"seed": options.seed, "points": rows}, indent=2))


if __name__ == "__main__":
    main()
