"""What a busy neighbour does to ``precision: fastest``'s trial: the fp32 and bf16-mixed
training steps of the default recipe's model on its first batch (as ``optimization=fast``
prepares them), timed as the trial times them (interleaved rounds, medians): alone, beside
a two-thread bf16 training loop already running, and beside one that starts with the
trial; with the cores the other processes kept busy, as the trial reads them.

    python benchmarks/busy_trial.py --repeats 3 --json docs/results/busy_trial.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from common import results_table
from rich.console import Console

from lightning_accel.cli.choices import first_batch
from lightning_accel.cli.compose import compose_job
from lightning_accel.cli.preflight import validated_run
from lightning_accel.cpu_load import OtherLoad
from lightning_accel.optimize.measured_choices import Candidate, step_times

SETTINGS = ("alone", "beside a running loop", "beside a starting loop")
NEIGHBOUR_SECONDS = 120.0


def neighbour(seconds: float) -> None:
    """A two-thread bf16 training loop of an MLP for ``seconds``."""
    torch.set_num_threads(2)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    inputs = torch.randn(64, 512)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(inputs).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def default_recipe_step() -> tuple[Any, pl.LightningModule]:
    """The default recipe's first batch and model, as the runner's trial gets them."""
    with tempfile.TemporaryDirectory() as run_dir:
        run = validated_run(compose_job(["optimization=fast"]), Path(run_dir))
        return first_batch(run, torch.device("cpu"))


def trial(setting: str, batch: Any, model: pl.LightningModule) -> dict[str, float]:
    """One trial in ``setting``: the steady fp32 and bf16 steps, their ratio, the load."""
    candidates = {name: Candidate(name) for name in ("32-true", "bf16-mixed")}
    loop = None
    if setting != "alone":
        command = [sys.executable, __file__, "--neighbour", str(NEIGHBOUR_SECONDS)]
        loop = subprocess.Popen(command)
        if setting == "beside a running loop":
            time.sleep(5)  # imports done, training
    try:
        with OtherLoad() as others:
            times = step_times(model, batch, candidates)
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    fp32, bf16 = times["32-true"].steady, times["bf16-mixed"].steady
    return {
        "fp32_ms": fp32 * 1e3,
        "bf16_ms": bf16 * 1e3,
        "speedup": fp32 / bf16,
        "other_cores": others.cores if others.cores is not None else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--neighbour", type=float, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.neighbour is not None:
        neighbour(options.neighbour)
        return
    batch, model = default_recipe_step()
    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    for _ in range(options.repeats):
        for setting in SETTINGS:
            runs[setting].append(trial(setting, batch, model))
    summary = {
        setting: {key: statistics.median(r[key] for r in results) for key in results[0]}
        | {"speedups": [round(r["speedup"], 2) for r in results]}
        for setting, results in runs.items()
    }
    columns = ("setting", "fp32 ms", "bf16 ms", "bf16 speed-up (each)", "others' cores")
    table = results_table("precision trial beside a busy neighbour (medians)", columns)
    for setting, figures in summary.items():
        speedups = ", ".join(f"{s:.2f}" for s in figures["speedups"])
        table.add_row(
            setting,
            f"{figures['fp32_ms']:.0f}",
            f"{figures['bf16_ms']:.0f}",
            speedups,
            f"{figures['other_cores']:.2f}",
        )
    Console().print(table)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"repeats": options.repeats, "results": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
