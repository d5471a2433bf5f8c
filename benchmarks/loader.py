"""Input pipeline speed: each recipe's training loader alone against what training consumes.

For each recipe, builds its DataModule from the recipe file and draws BATCHES training
batches from its loader (REPEATS times, median), then runs the recipe for STEPS steps with
``lightning-accel train`` (REPEATS times, median) and reads the samples per second trained
and the share of step time spent waiting for data from its run summary.

    python benchmarks/loader.py --repeats 3 --json docs/results/loader.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import run_cli
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
# The GPT recipe validates every 100 steps: once, at the end, in the measured runs.
RECIPE_LOOP = {"gpt": ["trainer.val_check_interval={steps}"]}


def loader_samples_per_second(recipe: str, batches: int) -> float:
    """Samples per second the recipe's training loader delivers on its own."""
    recipe_config = OmegaConf.load(REPO / "recipes" / f"{recipe}.yaml")
    # the values a recipe's data section refers to, as the default profiles set them
    config = OmegaConf.create(
        {"seed": 0, "optimization": {"channels_last": False}, "data": recipe_config.data}
    )
    datamodule = instantiate(config.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    drawn = 0
    started = time.perf_counter()
    while drawn < batches:
        for _ in loader:
            drawn += 1
            if drawn == batches:
                break
    return batches * loader.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["gpt"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loop = [f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=2", "logger=none"]

    table = Table(title=f"Loader alone vs training, medians of {args.repeats}")
    for column in (
        "recipe",
        "loader samples/s",
        "trained samples/s",
        "loader / training",
        "data wait",
    ):
        table.add_column(column, justify="right")
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            alone = [loader_samples_per_second(recipe, args.batches) for _ in range(args.repeats)]
            runs = [
                run_cli(
                    [
                        f"recipe={recipe}",
                        *loop,
                        *(o.format(steps=args.steps) for o in RECIPE_LOOP.get(recipe, [])),
                    ],
                    Path(tmp) / f"{recipe}{i}",
                )
                for i in range(args.repeats)
            ]
            loader = statistics.median(alone)
            trained = statistics.median(r["samples_per_second"] for r in runs)
            wait = statistics.median(r["data_wait_share"] for r in runs)
            report.append(
                {
                    "recipe": recipe,
                    "loader_samples_per_second": round(loader, 1),
                    "trained_samples_per_second": trained,
                    "loader_over_training": round(loader / trained, 1),
                    "data_wait_share": wait,
                    "loader_runs": [round(a, 1) for a in alone],
                    "training_runs": runs,
                }
            )
            table.add_row(
                recipe,
                f"{loader:,.0f}",
                f"{trained:,.0f}",
                f"{loader / trained:,.0f}x",
                f"{wait:.1%}",
            )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
