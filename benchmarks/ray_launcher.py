"""What launcher=ray costs against launcher=local: the start-up of a 2-rank run (a 4-step
run by default, whose command time is mostly start-up, and that time less Trainer.fit's), and the
seconds one restart loses (a rank killed with SIGKILL inside a training step, resumed from
the last checkpoint, against an uninterrupted run under the same launcher). Ray runs on a
head each command starts on this machine (``launcher.address=local``).

    python benchmarks/ray_launcher.py --repeats 3 --json docs/results/ray_launcher.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import benchmark_parser, results_table, run_cli
from fault_matrix import RUN
from rich.console import Console

from lightning_accel.callbacks.fault_injection import KillRank
from lightning_accel.checkpoints import run_weights

LAUNCHERS = {"local": ["launcher=local"], "ray": ["launcher=ray", "launcher.address=local"]}
# restarts: local's are torch elastic's (launcher=torchrun on one node)
RESTARTING = {
    "local": ["launcher=torchrun", "launcher.run_id=killed", "launcher.max_restarts=1"],
    "ray": [*LAUNCHERS["ray"], "launcher.max_failures=1"],
}
KILL = [
    f"+callbacks.fault._target_={KillRank.__module__}.{KillRank.__name__}",
    "+callbacks.fault.point=training_step",
    "+callbacks.fault.step=6",
    "+callbacks.fault.rank=1",
]
# the model and batch of RUN, no validation
SHORT = [*RUN[:5], "trainer.limit_val_batches=0", "logger=none"]


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3, steps=4)
    options = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, launcher in LAUNCHERS.items():
            starts, startups, lost = [], [], []
            for repeat in range(options.repeats):
                where = Path(scratch) / name / str(repeat)
                steps = f"trainer.max_steps={options.steps}"
                short = run_cli([*SHORT, steps, "hardware=ddp_cpu", *launcher], where / "short")
                starts.append(short["command_seconds"])
                startups.append(short["command_seconds"] - short["wall_seconds"])
                whole = run_cli([*RUN, "hardware=ddp_cpu", *launcher], where / "whole")
                killed_dir = where / "killed"
                killed = run_cli([*RUN, "hardware=ddp_cpu", *RESTARTING[name], *KILL], killed_dir)
                assert killed["restarts"] == 1, killed
                expected, weights = run_weights(where / "whole"), run_weights(killed_dir)
                assert all((weights[k] - expected[k]).abs().max() <= 1e-6 for k in expected)
                lost.append(killed["command_seconds"] - whole["command_seconds"])
                print(name, repeat, starts[-1], round(lost[-1], 1), flush=True)
            results[name] = {
                "short_run_seconds": statistics.median(starts),
                "outside_fit_seconds": statistics.median(startups),
                "restart_lost_seconds": statistics.median(lost),
            }
    table = results_table(
        f"2 ranks (ddp_cpu), medians of {options.repeats}",
        ("launcher", f"{options.steps}-step run (s)", "outside fit (s)", "a restart loses (s)"),
    )
    for name, figures in results.items():
        table.add_row(name, *(f"{value:.1f}" for value in figures.values()))
    Console().print(table)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
