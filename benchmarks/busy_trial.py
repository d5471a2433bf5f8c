"""What a busy neighbour does to ``precision: fastest``'s trial: the fp32 and bf16-mixed
training steps of the default recipe's GPT, timed as the trial times them (interleaved
rounds, medians), alone, beside a two-thread bf16 training loop already running, and
beside one that starts with the trial; with the cores the other processes kept busy, as
the trial reads them.

    python benchmarks/busy_trial.py --repeats 3 --json docs/results/busy_trial.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from lightning_accel.cpu_load import OtherLoad
from lightning_accel.models import GPTLanguageModel
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


def trial(setting: str) -> dict[str, float]:
    """One trial in ``setting``: the steady fp32 and bf16 steps, their ratio, the load."""
    torch.manual_seed(0)
    model = GPTLanguageModel(vocab_size=256, seq_len=128, n_layer=4, d_model=128, n_head=4)
    batch = (torch.randint(0, 256, (32, 128)), torch.randint(0, 256, (32, 128)))
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
    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    for _ in range(options.repeats):
        for setting in SETTINGS:
            runs[setting].append(trial(setting))
            print(setting, runs[setting][-1], flush=True)
    summary = {
        setting: {key: statistics.median(r[key] for r in results) for key in results[0]}
        | {"speedups": [round(r["speedup"], 2) for r in results]}
        for setting, results in runs.items()
    }
    print(json.dumps(summary, indent=2))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"repeats": options.repeats, "results": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
