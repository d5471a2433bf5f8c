"""What the framework costs per training step: a hand-written PyTorch loop against Lightning
and against lightning-accel, on the default recipe and on a tiny model.

recipe: the default recipe's model, data and batch, trained by a plain PyTorch loop (same
    AdamW, warm-up/cosine schedule and gradient clipping) in a process of its own, against
    ``lightning-accel train`` with the same settings and the default callbacks, for each
    profile of ``--profiles``: ``optimization=default`` against the loop in fp32,
    ``optimization=fast`` against the loop with forward and loss under bf16 autocast. The
    two take turns at blocks of steps after a warm-up (``turns.py``), so that a drift of the
    machine touches both alike; a block's time includes data loading and every hook. A
    run's overhead is the median of its blocks' ratios; medians and range over runs.
tiny: a 1-2 ms/step MLP on in-memory data, in this process, one thread: plain loop, plain Lightning
    (no logger, bar, checkpoints or summary), Lightning with the speed monitor alone,
    Lightning with 10 callbacks that override nothing (what Lightning's calling of every
    hook of every callback costs per callback), and lightning-accel's trainer
    (``build_trainer("cpu", "default")``) with the speed monitor, run summary and recompile
    guard. Per-step cost = (time of a long fit - time of a short
    fit) / (difference in steps), which leaves start-up out; what a setup adds is the
    median over repeats of its difference to plain Lightning in the same repeat.

Setups are interleaved within each repeat; medians over repeats.

    python benchmarks/overhead.py --repeats 3 --parts recipe \
        --json docs/results/overhead_recipe.json
    python benchmarks/overhead.py --repeats 3 --parts recipe \
        --overrides optimization.keep_freed_host_memory=false \
        --json docs/results/overhead_recipe_allocator_defaults.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from common import run_cli
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from turns import (
    PartnerGone,
    Turns,
    hand_first_baton,
    make_pipes,
    steps_in_turns,
    wait_until_ready,
)

from lightning_accel import build_trainer
from lightning_accel.callbacks import RunSummary, SpeedMonitor, XLARecompileGuard

WARMUP_STEPS = 5
BLOCK_STEPS = 5
BLOCKS = 19


@dataclass(frozen=True)
class RecipeProfile:
    """An optimization profile of the pack, the plain loop it is held against (``bf16``:
    forward and loss under bf16 autocast) and the overhead it is allowed."""

    bf16: bool
    target: float


RECIPE_PROFILES = {
    "default": RecipeProfile(bf16=False, target=0.02),
    "fast": RecipeProfile(bf16=True, target=0.03),
}


def recipe_overrides(profile: str, steps: int) -> list[str]:
    """The ``lightning-accel train`` overrides of the recipe runs under ``profile``: the
    default callbacks (progress bar included), validation only at the end."""
    return [
        "callbacks=default",
        "hardware=cpu",
        f"optimization={profile}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
    ]


def plain_recipe_loop(turns_dir: str, bf16: bool) -> list[float]:
    """Train the default recipe's model on its data with a hand-written loop (forward and
    loss under bf16 autocast when ``bf16``), taking turns with the pack's run in
    ``turns_dir``; the seconds of each block of steps."""
    from lightning_accel.cli.preflight import preflight, prepare_data
    from lightning_accel.cli.runner import build_object

    turns = Turns(turns_dir, "plain", WARMUP_STEPS, BLOCK_STEPS, BLOCKS)
    steps = turns.total_steps
    (run,) = preflight(recipe_overrides("default", steps), multirun=False)
    prepare_data([run])
    pl.seed_everything(run.seed, verbose=False)
    datamodule = build_object(run.data, "data")
    datamodule.setup("fit")
    module = build_object(run.model, "model")
    model, hp = module.model, module.hparams
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hp.learning_rate, betas=(0.9, 0.95), weight_decay=hp.weight_decay
    )

    def factor(step: int) -> float:
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        progress = (step - hp.warmup_steps) / max(1, steps - hp.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    model.train()
    loader = iter(datamodule.train_dataloader())
    for step in range(steps):
        turns.at_step(step)
        inputs, targets = next(loader)
        with autocast:
            logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    turns.close()
    return turns.block_seconds


def recipe_pair(tmp: Path, profile: str, number: int, extra: list[str]) -> dict[str, object]:
    """A plain-loop process and a ``lightning-accel train`` under ``profile``, taking turns
    at blocks of steps (every other pair the pack goes first): the blocks' step times, the
    median of the blocks' ratios, and the precision and compile choice the run made."""
    turns_dir = tmp / f"{profile}{number}-turns"
    make_pipes(turns_dir)
    bf16 = RECIPE_PROFILES[profile].bf16
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import overhead; "
        f"print(json.dumps(overhead.plain_recipe_loop({str(turns_dir)!r}, {bf16})))"
    )
    record = turns_dir / "pack.json"
    take_turns = (
        f"{{_target_: turns.TakeTurns, directory: '{turns_dir}', warmup_steps: {WARMUP_STEPS}, "
        f"block_steps: {BLOCK_STEPS}, blocks: {BLOCKS}, record: '{record}'}}"
    )
    steps = steps_in_turns(WARMUP_STEPS, BLOCK_STEPS, BLOCKS)
    overrides = [*recipe_overrides(profile, steps), f"callbacks.extra=[{take_turns}]", *extra]
    with ThreadPoolExecutor(1) as pool:
        pack = pool.submit(run_cli, overrides, tmp / f"{profile}{number}")
        # the plain loop starts once the pack has warmed up, so that neither start-up (the
        # pack's measured precision and compile choices) runs beside the other side
        try:
            wait_until_ready(turns_dir, ("pack",), alive=lambda: not pack.done())
        except PartnerGone:
            pack.result()  # the pack's run failed before its first turn: its error
            raise
        plain = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            hand_first_baton(turns_dir, first="plain" if number % 2 == 0 else "pack")
            summary = pack.result()
            output, _ = plain.communicate(timeout=300)
        finally:
            plain.kill()  # a no-op once it has ended; a partner that failed leaves none
    if plain.returncode:
        raise RuntimeError(f"the plain loop failed with exit code {plain.returncode}")
    plain_blocks = json.loads(output.strip().splitlines()[-1])
    pack_blocks = json.loads(record.read_text())
    ratios = [a / b - 1 for a, b in zip(pack_blocks, plain_blocks, strict=True)]
    return {
        "plain_ms": statistics.median(plain_blocks) / BLOCK_STEPS * 1000,
        "accel_ms": statistics.median(pack_blocks) / BLOCK_STEPS * 1000,
        "overhead": statistics.median(ratios),
        "plain_block_seconds": plain_blocks,
        "accel_block_seconds": pack_blocks,
        "precision": summary["precision"],
        "compile": summary["compile"],
    }


def recipe_result(profile: str, pairs: list[dict]) -> dict[str, object]:
    """Medians of one profile's runs: step times, and the overhead as the median of the
    runs' overheads (each the median of its blocks' ratios) with their range."""
    overheads = sorted(p["overhead"] for p in pairs)
    overhead = statistics.median(overheads)
    return {
        "plain_loop": "bf16 autocast" if RECIPE_PROFILES[profile].bf16 else "fp32",
        "plain_ms": statistics.median(p["plain_ms"] for p in pairs),
        "accel_ms": statistics.median(p["accel_ms"] for p in pairs),
        "overhead": overhead,
        "overhead_range": [overheads[0], overheads[-1]],
        "target": RECIPE_PROFILES[profile].target,
        "within_target": overhead <= RECIPE_PROFILES[profile].target,
        "runs": pairs,
    }


class TinyMLP(pl.LightningModule):
    """A model whose step takes 1-2 ms on two CPU cores."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_loader(steps: int) -> DataLoader:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64 * steps, 128), torch.randint(0, 10, (64 * steps,)))
    return DataLoader(data, batch_size=64)


def plain_tiny(steps: int) -> None:
    model = TinyMLP()
    optimizer = model.configure_optimizers()
    for step, (inputs, targets) in enumerate(tiny_loader(steps)):
        loss = F.cross_entropy(model.net(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step + 1 == steps:
            break


QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "gradient_clip_val": 1.0,
}


def lightning_tiny(steps: int, callbacks: list[pl.Callback]) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, callbacks=callbacks, **QUIET
    )
    trainer.fit(TinyMLP(), tiny_loader(steps))


def accel_tiny(steps: int) -> None:
    callbacks = [SpeedMonitor(), RunSummary(print_table=False), XLARecompileGuard()]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(
            "cpu", "default", callbacks=callbacks, max_steps=steps, default_root_dir=tmp, **QUIET
        )
        trainer.fit(TinyMLP(), tiny_loader(steps))


EMPTY_CALLBACKS = 10

TINY_SETUPS: dict[str, Callable[[int], None]] = {
    "plain PyTorch": plain_tiny,
    "plain Lightning": lambda steps: lightning_tiny(steps, []),
    "Lightning + SpeedMonitor": lambda steps: lightning_tiny(steps, [SpeedMonitor()]),
    f"Lightning + {EMPTY_CALLBACKS} empty callbacks": lambda steps: lightning_tiny(
        steps, [pl.Callback() for _ in range(EMPTY_CALLBACKS)]
    ),
    "lightning-accel": accel_tiny,
}


def speed_monitor_hook_ms(calls: int = 20_000) -> float:
    """Milliseconds per step the speed monitor's per-step hooks take, called directly on a
    fitted trainer (between logging steps, which are the only ones that synchronize)."""
    monitor = SpeedMonitor(warmup_steps=0, log_every_n_steps=10**9)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, callbacks=[monitor], **QUIET)
    model, loader = TinyMLP(), tiny_loader(3)
    trainer.fit(model, loader)
    batch = next(iter(loader))
    started = time.perf_counter()
    for index in range(calls):
        monitor.on_train_batch_start(trainer, model, batch, index)
        monitor.on_train_batch_end(trainer, model, None, batch, index)
    return (time.perf_counter() - started) / calls * 1000


def per_step_ms(train: Callable[[int], None], short: int, long: int) -> float:
    """Milliseconds per step of ``train``, start-up costs differenced out."""
    times = {}
    for steps in (short, long):
        started = time.perf_counter()
        train(steps)
        times[steps] = time.perf_counter() - started
    return (times[long] - times[short]) / (long - short) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--parts", nargs="+", choices=["recipe", "tiny"], default=["recipe", "tiny"]
    )
    parser.add_argument(
        "--profiles", nargs="+", choices=list(RECIPE_PROFILES), default=list(RECIPE_PROFILES)
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="more overrides of the pack's recipe runs"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"repeats": args.repeats}

    if "tiny" in args.parts:
        import lightning_accel.cli.console as cli_console

        cli_console.quiet_upstream()
        torch.set_num_threads(1)  # a 1 ms step gains nothing from a second thread but noise
        runs: dict[str, list[float]] = {name: [] for name in TINY_SETUPS}
        for _ in range(args.repeats):
            for name, train in TINY_SETUPS.items():
                runs[name].append(per_step_ms(train, 300, 2300))
        medians = {name: statistics.median(values) for name, values in runs.items()}
        # each setup against plain Lightning of the same repeat: drifts of the machine cancel
        added = {
            name: statistics.median(
                a - b for a, b in zip(values, runs["plain Lightning"], strict=True)
            )
            for name, values in runs.items()
        }
        table = Table(title=f"Tiny MLP, ms per step (medians of {args.repeats})")
        for column in ("setup", "ms / step", "added to plain Lightning"):
            table.add_column(column, justify="right")
        for name, value in medians.items():
            table.add_row(name, f"{value:.3f}", f"{added[name]:+.3f} ms")
        console.print(table)
        result["tiny_added_ms_per_step"] = added
        per_callback = added[f"Lightning + {EMPTY_CALLBACKS} empty callbacks"] / EMPTY_CALLBACKS
        console.print(f"Lightning's hook calls: {per_callback * 1000:.1f} µs per callback per step")
        result["callback_dispatch_ms_per_step"] = per_callback
        hooks = statistics.median(speed_monitor_hook_ms() for _ in range(args.repeats))
        console.print(f"SpeedMonitor per-step hooks alone: {hooks * 1000:.1f} µs per step")
        result["tiny_ms_per_step"] = medians
        result["speed_monitor_hooks_ms_per_step"] = hooks
        result["tiny_runs"] = runs

    if "recipe" in args.parts:
        pairs: dict[str, list[dict]] = {profile: [] for profile in args.profiles}
        # the pack's run imports the turn-taking callback from here
        benchmarks = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (benchmarks, os.environ.get("PYTHONPATH")) if p
        )
        with tempfile.TemporaryDirectory() as tmp:
            for number in range(args.repeats):
                for profile in args.profiles:
                    pairs[profile].append(recipe_pair(Path(tmp), profile, number, args.overrides))
        title = f"Default recipe, {BLOCKS} turns of {BLOCK_STEPS} steps (medians of {args.repeats})"
        table = Table(title=title)
        for column in ("optimization", "plain loop", "plain ms", "lightning-accel ms", "overhead"):
            table.add_column(column, justify="right")
        recipe: dict[str, dict[str, object]] = {}
        for profile, runs in pairs.items():
            figures = recipe_result(profile, runs)
            low, high = figures["overhead_range"]
            table.add_row(
                profile,
                str(figures["plain_loop"]),
                f"{figures['plain_ms']:.1f}",
                f"{figures['accel_ms']:.1f}",
                f"{figures['overhead']:+.1%} ({low:+.1%} to {high:+.1%})",
            )
            recipe[profile] = figures
        console.print(table)
        result["recipe"] = recipe

    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
