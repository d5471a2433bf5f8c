"""Where a GPT training step's time goes under each way the pack can compute it, in a plain
PyTorch loop (no Lightning, random tokens, AdamW, gradient clipping, bf16 autocast).

For each shape (``LAYERSxWIDTH``, heads of 64, 1,024-token samples, 8 per step) every
variant is built, warmed up (compiled), then timed in ROUNDS rounds of STEPS steps, the
variants taking turns in alternating order; a variant's step time is the median of its
rounds. Variants:

    eager           the model as written
    fused-adamw     eager, AdamW with ``fused=True``
    compile         ``torch.compile`` of the whole model
    compile-blocks  the pack's per-block compile (``optimization.compile.per_block``)
    float8-blocks   the pack's float8 Linear layers (tensorwise) and per-block compile

Without a CUDA GPU it runs a tiny shape on the CPU, float8 in torchao's emulation: the code
path, not a measurement.

    python benchmarks/step_variants.py --shapes 12x768 --variants all \\
        --json docs/results/step_variants_h200.json
    python benchmarks/step_variants.py --shapes 4x2048,2x4096 \\
        --variants compile-blocks,float8-blocks
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from common import results_table
from rich.console import Console

from lightning_accel.config import CompileConfig, Float8Config
from lightning_accel.devices import synchronized_time
from lightning_accel.models.gpt import GPT, GPTConfig
from lightning_accel.optimize.float8 import convert_to_float8
from lightning_accel.optimize.transforms import compile_model

VARIANTS = ("eager", "fused-adamw", "compile", "compile-blocks", "float8-blocks")
VOCAB = 256


@dataclass
class Variant:
    """One way of computing the step: its model, optimizer and timed rounds (seconds)."""

    name: str
    step: Callable[[torch.Tensor], None]
    rounds: list[float]


def build(name: str, config: GPTConfig, device: torch.device) -> Variant:
    """The model and optimizer of variant ``name``, from the same initial weights."""
    torch.manual_seed(0)
    model = GPT(config).to(device)
    if name == "float8-blocks":
        convert_to_float8(model, Float8Config(enabled=True, emulate=device.type != "cuda"))
    if name == "compile":
        model = torch.compile(model)
    elif name in ("compile-blocks", "float8-blocks"):
        compile_model(model, CompileConfig(enabled=True, per_block=True))
    fused = {"fused": True} if name == "fused-adamw" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, **fused)

    def step(tokens: torch.Tensor) -> None:
        with torch.autocast(device.type, torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Variant(name, step, [])


def time_shape(
    shape: str, variants: list[str], device: torch.device, args: argparse.Namespace
) -> dict[str, float]:
    """Median milliseconds per step of each variant at ``shape`` (``LAYERSxWIDTH``)."""
    layers, width = (int(part) for part in shape.split("x"))
    config = GPTConfig(VOCAB, args.seq_len, layers, width, max(1, width // 64))
    tokens = torch.randint(0, VOCAB, (args.batch_size, args.seq_len + 1), device=device)
    built = [build(name, config, device) for name in variants]
    for variant in built:
        for _ in range(args.warmup):
            variant.step(tokens)
    for index in range(args.rounds):
        for variant in built if index % 2 == 0 else reversed(built):
            started = synchronized_time(device)
            for _ in range(args.steps):
                variant.step(tokens)
            variant.rounds.append((synchronized_time(device) - started) / args.steps)
    return {v.name: round(statistics.median(v.rounds) * 1000, 3) for v in built}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--shapes", default="12x768" if cuda else "2x64")
    parser.add_argument("--variants", default="all", help="comma-separated, or all")
    parser.add_argument("--seq-len", type=int, default=1024 if cuda else 32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10 if cuda else 2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; valid: {', '.join(VARIANTS)}")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    results = {shape: time_shape(shape, variants, device, args) for shape in args.shapes.split(",")}

    name = torch.cuda.get_device_name(0) if cuda else "CPU (code path only)"
    table = results_table(f"ms per step, {name}", ("shape", *variants))
    for shape, times in results.items():
        first = times[variants[0]]
        table.add_row(shape, *(f"{times[v]:.2f} ({first / times[v]:.2f}x)" for v in variants))
    Console().print(table)
    if args.json:
        setting = {k: v for k, v in vars(args).items() if k != "json"}
        record = {"device": name, "torch": torch.__version__, "setting": setting}
        args.json.write_text(json.dumps({**record, "ms_per_step": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
