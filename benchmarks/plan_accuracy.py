"""How right ``lightning-accel plan`` is: its predicted per-rank memory against the tensor
memory measured in real training steps, and its ranking of layouts by speed against the
measured ranking, on this CPU.

Memory: the GPT recipe at three sizes x {cpu, ddp_cpu at 2, fsdp2_cpu at 2 and 4 ranks} x
{default, memory}; each run trains 4 steps with the pack's MemoryProbe callback on step 2
(torch's MemTracker: every tensor of forward, backward and optimizer step), and the
largest rank's peak is compared with the plan's row for the same layout, world size,
precision and activation checkpointing. Parameters and optimizer state are compared
exactly (bytes of the rank's own storages, FSDP2's padded shards included).

Speed: ``lightning-accel bench`` over cpu, ddp_cpu and fsdp2_cpu on the default recipe
(medians of repeats), ranked by samples per second, against the plan's ranking.

    python benchmarks/plan_accuracy.py --out docs/results/plan_accuracy.json
    (--skip-memory or --skip-speed runs one half)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SIZES = {
    "S (2x64, 8x64)": [
        "model.n_layer=2", "model.d_model=64", "data.seq_len=64", "data.batch_size=8",
    ],
    "M (4x128, 16x128)": [
        "model.n_layer=4", "model.d_model=128", "data.seq_len=128", "data.batch_size=16",
    ],
    "L (6x256, 8x256)": [
        "model.n_layer=6", "model.d_model=256", "data.seq_len=256", "data.batch_size=8",
    ],
}  # fmt: skip
# (hardware profile, ranks, the plan's layout)
SETUPS = [
    ("cpu", 1, "single"),
    ("ddp_cpu", 2, "ddp"),
    ("fsdp2_cpu", 2, "fsdp2"),
    ("fsdp2_cpu", 4, "fsdp2"),
]
OPTIMIZATIONS = {"default": False, "memory": True}  # profile -> activation checkpointing
PROBE = "lightning_accel.callbacks.memory_probe.MemoryProbe"
SPEED_STEPS = 40


def lightning_accel(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_accel", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def planned_rows(overrides: list[str], worlds: str = "1,2,4") -> list[dict[str, Any]]:
    result = lightning_accel("plan", "--json", "--world", worlds, *overrides)
    return json.loads(result.stdout)["layouts"]


def find_row(rows: list[dict], layout: str, world: int, checkpointing: bool) -> dict:
    return next(
        r
        for r in rows
        if r["layout"] == layout
        and r["world"] == world
        and r["precision"] == "32-true"
        and r["activation_checkpointing"] == checkpointing
    )


def measured_memory(overrides: list[str], run_dir: Path) -> list[dict[str, int]]:
    """Train 4 steps with the memory probe; each rank's figures."""
    lightning_accel(
        "train",
        "callbacks=minimal",
        "logger=none",
        "trainer.max_steps=4",
        "trainer.limit_val_batches=0",  # no validation
        f"+callbacks.memory_probe._target_={PROBE}",
        f"+callbacks.memory_probe.output_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    )
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("memory_probe_rank*.json"))]


def memory_rows(work: Path) -> list[dict[str, Any]]:
    rows = []
    for size, model in SIZES.items():
        plan = planned_rows(model)
        for profile, ranks, layout in SETUPS:
            for optimization, checkpointing in OPTIMIZATIONS.items():
                overrides = [
                    *model, f"hardware={profile}", f"hardware.devices={ranks}",
                    f"optimization={optimization}",
                ]  # fmt: skip
                run_dir = work / f"{len(rows)}"
                ranks_measured = measured_memory(overrides, run_dir)
                row = find_row(plan, layout, ranks, checkpointing)
                measured = max(r["Total"] for r in ranks_measured)
                rows.append(
                    {
                        "size": size,
                        "hardware": f"{profile} x{ranks}",
                        "optimization": optimization,
                        "predicted_bytes": row["device_bytes"],
                        "measured_bytes": measured,
                        "error": row["device_bytes"] / measured - 1,
                        "parameters_exact": row["memory"]["parameters"]
                        == max(r["parameter_bytes"] for r in ranks_measured),
                        "optimizer_exact": row["memory"]["optimizer"]
                        == max(r["optimizer_state_bytes"] for r in ranks_measured),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def speed_ranking(work: Path, repeats: int) -> dict[str, Any]:
    """Measured (bench) and predicted (plan) order of the CPU layouts on the default recipe."""
    steps = [f"trainer.max_steps={SPEED_STEPS}", f"trainer.val_check_interval={SPEED_STEPS}"]
    lightning_accel(
        "bench", "--repeats", str(repeats), "--out", str(work / "bench"), "logger=none",
        "hardware=cpu,ddp_cpu,fsdp2_cpu", "trainer.limit_val_batches=2", *steps,
    )  # fmt: skip
    cells = json.loads((work / "bench" / "results.json").read_text())["cells"]
    measured = {c["cell"]: c["samples_per_second"] for c in cells}
    plan = planned_rows([], "1,2")
    layouts = {"cpu": ("single", 1), "ddp_cpu": ("ddp", 2), "fsdp2_cpu": ("fsdp2", 2)}
    predicted = {
        name: find_row(plan, layout, world, False)["samples_per_second"]
        for name, (layout, world) in layouts.items()
    }
    return {
        "measured_samples_per_second": measured,
        "predicted_samples_per_second": predicted,
        "measured_order": sorted(measured, key=measured.get, reverse=True),
        "predicted_order": sorted(predicted, key=predicted.get, reverse=True),
    }


def table(rows: list[dict[str, Any]]) -> Table:
    shown = Table(title="plan: predicted vs measured peak tensor memory per rank (fp32)")
    for header in ("model", "hardware", "optimization", "predicted", "measured", "error", "exact"):
        shown.add_column(header)
    for row in rows:
        exact = row["parameters_exact"] and row["optimizer_exact"]
        shown.add_row(
            row["size"], row["hardware"], row["optimization"],
            f"{row['predicted_bytes'] / 2**20:.1f} MiB", f"{row['measured_bytes'] / 2**20:.1f} MiB",
            f"{row['error']:+.1%}", "yes" if exact else "NO",
        )  # fmt: skip
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = [] if options.skip_memory else memory_rows(Path(work))
        ranking = None if options.skip_speed else speed_ranking(Path(work), options.repeats)
    if rows:
        Console().print(table(rows))
    if ranking:
        print(
            "measured order:", ranking["measured_order"], "predicted:", ranking["predicted_order"]
        )
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps({"memory": rows, "speed": ranking}, indent=2))


if __name__ == "__main__":
    main()
