"""Can a simple cost model predict when float8 pays? A test of one against the H200's
measurements, before ``plan`` or the runner would rely on it.

The model: float8 changes a step's time by ``cast * E - saved * F``, where ``E`` is the
elements the float8 casts read (each converted layer's input and output gradient, ``tokens
x (in + out)``, and its weight twice, ``2 x in x out``) and ``F`` the converted layers'
FLOPs (``6 x tokens x in x out``), whose matmuls float8 runs at twice bf16's rate. Its two
constants are fitted on two of the measured widths and the third width predicted, for each
pair. The measured step times are the plain-loop study's (``step_variants.py``: bf16 with
per-block compile against float8 with per-block compile).

    python benchmarks/float8_cost_fit.py docs/results/step_variants_h200_768.json \\
        docs/results/step_variants_h200_wide.json --json docs/results/float8_cost_fit.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from common import results_table
from rich.console import Console

from lightning_accel.models.gpt import GPT, GPTConfig
from lightning_accel.optimize.float8 import float8_layers

HEAD_WIDTH = 64  # step_variants.py's heads


@dataclass(frozen=True)
class Measured:
    """One shape's bf16 and float8 step times (seconds), with its cast elements and the
    FLOPs of its converted layers."""

    shape: str
    bf16: float
    float8: float
    cast_elements: float
    converted_flops: float


def measured(path: Path) -> list[Measured]:
    """The shapes of one ``step_variants.py`` result file."""
    record = json.loads(path.read_text())
    setting = record["setting"]
    tokens = setting["seq_len"] * setting["batch_size"]
    shapes = []
    for shape, times in record["ms_per_step"].items():
        layers, width = map(int, shape.split("x"))
        config = GPTConfig(
            seq_len=setting["seq_len"], n_layer=layers, d_model=width, n_head=width // HEAD_WIDTH
        )
        with torch.device("meta"):
            model = GPT(config)
        modules = dict(model.named_modules())
        converted = [modules[name] for name in float8_layers(model)[0]]
        cast = sum(
            tokens * (m.in_features + m.out_features) + 2 * m.weight.numel() for m in converted
        )
        flops = sum(6 * tokens * m.weight.numel() for m in converted)
        bf16, float8 = times["compile-blocks"] / 1e3, times["float8-blocks"] / 1e3
        shapes.append(Measured(shape, bf16, float8, cast, flops))
    return shapes


def fit_and_predict(shapes: list[Measured]) -> list[dict]:
    """For each pair of shapes: the two constants fitted on it (exactly) and the third's
    float8 / bf16 speed-up predicted beside the measured one."""
    rows = []
    for first, second in itertools.combinations(shapes, 2):
        # cast * E - saved * F = float8 - bf16, for both shapes (Cramer's rule)
        (e1, f1, d1), (e2, f2, d2) = (
            (s.cast_elements, s.converted_flops, s.float8 - s.bf16) for s in (first, second)
        )
        determinant = -e1 * f2 + e2 * f1
        cast = (-d1 * f2 + d2 * f1) / determinant
        saved = (e1 * d2 - e2 * d1) / determinant
        for third in (s for s in shapes if s not in (first, second)):
            predicted = third.bf16 + cast * third.cast_elements - saved * third.converted_flops
            rows.append(
                {
                    "fitted_on": f"{first.shape}, {second.shape}",
                    "cast_ns_per_element": round(cast * 1e9, 4),
                    "saved_ps_per_flop": round(saved * 1e12, 5),
                    "predicted_shape": third.shape,
                    "predicted_speedup": round(third.bf16 / predicted, 3),
                    "measured_speedup": round(third.bf16 / third.float8, 3),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="step_variants.py JSON files")
    parser.add_argument("--json", type=Path, help="write the rows here")
    options = parser.parse_args()
    shapes = [shape for path in options.results for shape in measured(path)]
    rows = fit_and_predict(shapes)
    headers = ("fitted on", "cast ns/element", "saved ps/FLOP", "third", "predicted", "measured")
    table = results_table("float8 / bf16 at the third shape, the model fitted on two", headers)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    if options.json:
        record = {"sources": [str(path) for path in options.results], "rows": rows}
        options.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
