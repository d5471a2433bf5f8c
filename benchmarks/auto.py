"""Is ``optimization=auto`` as good as the best hand choice? On the GPT and image recipes,
every hand-made cell of ``default`` x precision {32-true, bf16-mixed} x compile {off, on}
and ``memory`` x precision, plus ``fast`` and ``auto``, trained in their own processes,
REPEATS times interleaved; medians of steady-state throughput (compilation left out, as ``bench``
reports it) and of the whole fit's wall time (compilation included). ``auto`` passes when
its throughput is within 5% of the fastest cell's.

    python benchmarks/auto.py --repeats 3 --json docs/results/auto.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import benchmark_parser, run_cli
from rich.console import Console
from rich.table import Table

RECIPES = {"gpt": [], "image": ["recipe=image", "trainer.val_check_interval=1.0"]}


def cells() -> dict[str, list[str]]:
    """Each cell's label and overrides."""
    made = {}
    for profile in ("default", "memory"):
        for precision in ("32-true", "bf16-mixed"):
            # compile is timed on the default profile (it does not change what memory saves)
            for compiled in ("false", "true") if profile == "default" else ("false",):
                label = f"{profile} · {precision} · compile {'on' if compiled == 'true' else 'off'}"
                made[label] = [
                    f"optimization={profile}",
                    f"optimization.precision={precision}",
                    f"optimization.compile.enabled={compiled}",
                    "optimization.compile.per_block=true",
                ]
    made["fast"] = ["optimization=fast"]
    made["auto"] = ["optimization=auto"]
    return made


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3, steps=60)
    parser.add_argument("--recipes", default="gpt,image", help="comma list of " + ",".join(RECIPES))
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    options = parser.parse_args()
    loop = [
        f"trainer.max_steps={options.steps}",
        f"trainer.val_check_interval={options.steps}",
        "trainer.limit_val_batches=2",
        "logger=none",
    ]
    recipes = {name: RECIPES[name] for name in options.recipes.split(",")}
    matrix = cells()
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = options.work or Path(scratch)
        for repeat in range(options.repeats):
            for recipe, recipe_overrides in recipes.items():
                for number, (label, overrides) in enumerate(matrix.items()):
                    run_dir = work / f"{recipe}-{number}-{repeat}"
                    summary = run_cli([*loop, *recipe_overrides, *overrides], run_dir)
                    runs.setdefault((recipe, label), []).append(summary)
                    print(recipe, label, summary["samples_per_second"], flush=True)
    results = []
    for (recipe, label), summaries in runs.items():
        results.append(
            {
                "recipe": recipe,
                "cell": label,
                "samples_per_second": statistics.median(s["samples_per_second"] for s in summaries),
                "fit_seconds": statistics.median(s["wall_seconds"] for s in summaries),
                "precision": summaries[-1]["precision"],
                "compile": summaries[-1].get("compile"),
                "choices": {
                    key: summaries[-1].get(key)
                    for key in ("precision_reason", "compile_reason", "micro_batch_reason")
                },
            }
        )
    table = Table(
        title=f"optimization=auto against every hand choice, medians of {options.repeats}"
    )
    for header in ("recipe", "cell", "precision", "compile", "samples/s", "vs fastest", "fit s"):
        table.add_column(header)
    verdicts = {}
    for recipe in recipes:
        rows = [r for r in results if r["recipe"] == recipe]
        fastest = max(r["samples_per_second"] for r in rows)
        for row in sorted(rows, key=lambda r: -r["samples_per_second"]):
            row["vs_fastest"] = row["samples_per_second"] / fastest
            table.add_row(
                recipe, row["cell"], row["precision"], str(row["compile"]),
                f"{row['samples_per_second']:,.1f}", f"{row['vs_fastest']:.1%}",
                f"{row['fit_seconds']:.1f}",
            )  # fmt: skip
        auto = next(r for r in rows if r["cell"] == "auto")
        verdicts[recipe] = auto["vs_fastest"] >= 0.95
    Console().print(table)
    print("auto within 5% of the fastest cell:", verdicts)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(
            json.dumps({"cells": results, "auto_within_5_percent": verdicts}, indent=2)
        )


if __name__ == "__main__":
    main()
