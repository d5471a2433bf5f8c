"""Collects what a run achieved and writes it as ``summary.json`` plus a table for people."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from lightning_accel.callbacks.memory import model_state_bytes, peak_process_memory_mb
from lightning_accel.callbacks.throughput import ThroughputClock


def _inputs(batch: Any) -> torch.Tensor | None:
    """The first tensor of a batch: the inputs, by the usual (inputs, targets) convention."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        return next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return None


def _data_wait_seconds(trainer: pl.Trainer) -> float | None:
    """Time the loop has waited for training batches, from loaders that count it."""
    waited = getattr(trainer.train_dataloader, "wait_seconds", None)
    return float(waited) if waited is not None else None


class RunSummary(pl.Callback):
    """Records losses, throughput and output paths, then writes ``summary.json`` and prints a
    table when fitting ends (rank 0 only).

    Tokens are counted when the batch inputs are integer token ids; samples always.
    Throughput is wall time over training steps (data loading included; validation, the
    checkpoints saved after it or at epoch end, and the first ``warmup_steps``, which hold
    compilation, left out). Runs too short to
    leave warm-up out are measured from their first step. Compile time is reported on its
    own: what the warm-up steps took beyond as many steady steps.

    Args:
        output_dir: where ``summary.json`` goes; default the trainer's ``default_root_dir``.
        warmup_steps: steps left out of the throughput figures.
        extra: fixed facts to add to the summary (recipe, profiles, ...).
        print_table: whether to print the rich table.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        warmup_steps: int = 5,
        extra: dict[str, Any] | None = None,
        print_table: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.warmup_steps = warmup_steps
        self.extra = dict(extra or {})
        self.print_table = print_table
        self.summary: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self.validations: list[dict[str, float]] = []
        self.train_losses: list[float] = []
        self.all_steps = ThroughputClock()
        self.steady_steps = ThroughputClock()
        self._fit_started = 0.0
        self.memory: dict[str, Any] = {}
        self.throughput: dict[str, Any] = {}
        self._gradient_bytes: int | None = None
        self._data_wait_at_start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self._fit_started = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.all_steps.started:
            self.all_steps.start(pl_module.device)
        if not self.steady_steps.started and trainer.global_step >= self.warmup_steps:
            self.steady_steps.start(pl_module.device)
            self._data_wait_at_start = _data_wait_seconds(trainer)
        for clock in (self.all_steps, self.steady_steps):
            clock.resume(pl_module.device)

    # Lightning runs checkpoint callbacks after all others: pausing here also leaves out the
    # checkpoints saved at the end of validation and of the epoch, until the next step starts.
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause_clocks(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause_clocks(pl_module)

    def _pause_clocks(self, pl_module: pl.LightningModule) -> None:
        for clock in (self.all_steps, self.steady_steps):
            clock.pause(pl_module.device)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_validation(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        logged_step = (
            trainer.global_step == 1 or trainer.global_step % trainer.log_every_n_steps == 0
        )
        if logged_step:  # reading a loss waits for the device: only at the logging interval
            # the logged value is synced over ranks when the module asks for it; the raw one is not
            loss = trainer.callback_metrics.get("train/loss")
            if loss is None:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor):
                self.train_losses.append(float(loss))
        inputs = _inputs(batch)
        samples = inputs.shape[0] if inputs is not None and inputs.ndim > 0 else 0
        tokens = inputs.numel() if samples and not inputs.is_floating_point() else 0
        for clock in (self.all_steps, self.steady_steps):
            if clock.started:
                clock.count(samples, tokens)

    def _record_validation(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if metrics:
            self.validations.append({"step": trainer.global_step, **metrics})

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._gradient_bytes is None:  # gradients exist only here; measured once
            self._gradient_bytes = model_state_bytes(pl_module.parameters(), [])["gradients"]

    def _warmup_figures(
        self, pl_module: pl.LightningModule, step_seconds: float | None
    ) -> dict[str, Any]:
        """Time of the warm-up steps, and of compilation (when the model has compiled parts):
        what the warm-up steps took beyond steady steps."""
        if not self.steady_steps.steps or step_seconds is None:
            return {"warmup_seconds": None, "compile_seconds": None}
        device = pl_module.device
        warmup = self.all_steps.seconds(device) - self.steady_steps.seconds(device)
        warmup_steps = self.all_steps.steps - self.steady_steps.steps
        compiled = any(getattr(m, "_compiled_call_impl", None) for m in pl_module.modules())
        extra = round(max(0.0, warmup - warmup_steps * step_seconds), 3)
        return {"warmup_seconds": round(warmup, 3), "compile_seconds": extra if compiled else None}

    def _data_wait_share(
        self, trainer: pl.Trainer, clock: ThroughputClock, seconds: float
    ) -> float | None:
        """Share of the measured training time this rank waited for its next batch."""
        waited = _data_wait_seconds(trainer)
        if waited is None or seconds <= 0:
            return None
        since = self._data_wait_at_start if clock is self.steady_steps else 0.0
        return round((waited - (since or 0.0)) / seconds, 4)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        clock = self.steady_steps if self.steady_steps.steps else self.all_steps
        seconds = clock.seconds(pl_module.device)
        step_seconds = seconds / clock.steps if clock.steps else None
        world = trainer.world_size
        warmup = self._warmup_figures(pl_module, step_seconds)
        self.throughput = {
            "measured_steps": clock.steps,
            "step_seconds": round(step_seconds, 5) if step_seconds else None,
            **warmup,
            "data_wait_share": self._data_wait_share(trainer, clock, seconds),
            "samples_per_second": clock.rate(clock.samples * world, seconds),
            "tokens_per_second": clock.rate(clock.tokens * world, seconds)
            if clock.tokens
            else None,
        }
        # Measured while the process group is still up: every rank contributes its figures.
        state = model_state_bytes(pl_module.parameters(), trainer.optimizers)
        state["gradients"] = self._gradient_bytes or 0
        mine = torch.tensor(
            [sum(state.values()), peak_process_memory_mb()],
            dtype=torch.float64,
            device=trainer.strategy.root_device,  # NCCL gathers GPU tensors only
        )
        everyone = trainer.strategy.all_gather(mine).reshape(-1, 2).cpu()
        comm = getattr(trainer.strategy, "allreduce_bytes_per_step", None)
        self.memory = {
            "model_state_bytes": state,
            "model_state_bytes_per_rank": [int(v) for v in everyone[:, 0].tolist()],
            "peak_memory_mb_per_rank": [round(v, 1) for v in everyone[:, 1].tolist()],
            "allreduce_bytes_per_step": comm() if callable(comm) else None,
        }

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        world = trainer.world_size
        self.summary = {
            **self.extra,
            "steps": trainer.global_step,
            "wall_seconds": round(time.perf_counter() - self._fit_started, 3),
            "world_size": world,
            "strategy": getattr(trainer.strategy, "strategy_name", type(trainer.strategy).__name__),
            "precision": str(trainer.precision),
            "precision_reason": _precision_reason(trainer),
            **self.throughput,
            "first_train_loss": self.train_losses[0] if self.train_losses else None,
            "last_train_loss": self.train_losses[-1] if self.train_losses else None,
            "validation": self.validations,
            **self.memory,
            # figures other callbacks report (e.g. the XLA recompile guard's compilations)
            **{
                k: v
                for c in trainer.callbacks
                if hasattr(c, "summary_figures")
                for k, v in c.summary_figures().items()
            },
            "checkpoint": _checkpoint_path(trainer),
            "metrics": _metrics_path(trainer),
        }
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer) -> None:
        directory = Path(self.output_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "summary.json"
        staging = path.with_suffix(f".json.{os.getpid()}.tmp")
        staging.write_text(json.dumps(self.summary, indent=2) + "\n")
        staging.replace(path)
        self.summary["summary"] = str(path)
        if self.print_table:
            Console(stderr=True).print(summary_table(self.summary))


def _precision_reason(trainer: pl.Trainer) -> str | None:
    """Why the run computes in its precision, when the pack's Trainer builder chose it."""
    for callback in trainer.callbacks:
        choice = getattr(callback, "precision", None)
        if choice is not None and hasattr(choice, "reason"):
            return choice.reason
    return None


def _checkpoint_path(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    return (
        getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "") or None
    )


def _metrics_path(trainer: pl.Trainer) -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return str(Path(logger.log_dir) / "metrics.csv")
        if logger.log_dir:
            return str(logger.log_dir)
    return None


def summary_table(summary: dict[str, Any]) -> Table:
    """A two-column rich table of a run summary."""
    table = Table(title="Run summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    validations = summary.get("validation") or []
    rows: list[tuple[str, Any]] = [
        (key, summary.get(key)) for key in ("recipe", "hardware", "optimization") if key in summary
    ]
    rows += [
        ("steps", summary["steps"]),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
        ("precision", _with_reason(summary["precision"], summary.get("precision_reason"))),
        ("train loss", _first_last(summary["first_train_loss"], summary["last_train_loss"])),
    ]
    if validations:
        first, last = validations[0], validations[-1]
        for key in sorted(k for k in last if k != "step"):
            rows.append((key, _first_last(first.get(key), last[key], first["step"], last["step"])))
    if summary.get("tokens_per_second"):
        rows.append(("tokens/s", f"{summary['tokens_per_second']:,.0f}"))
    if summary.get("compile_seconds"):
        rows.append(("compile time", f"{summary['compile_seconds']:.1f} s (not in throughput)"))
    if summary.get("peak_memory_mb_per_rank"):
        peaks = summary["peak_memory_mb_per_rank"]
        rows.append(("peak memory / rank", ", ".join(f"{p:,.0f} MiB" for p in peaks)))
    if summary.get("samples_per_second"):
        rows.append(("samples/s", f"{summary['samples_per_second']:,.1f}"))
    if summary.get("data_wait_share") is not None:
        rows.append(("waiting for data", f"{summary['data_wait_share']:.1%} of step time"))
    for key in ("checkpoint", "metrics", "summary"):
        if summary.get(key):
            rows.append((key, summary[key]))
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def _with_reason(value: str, reason: str | None) -> str:
    return f"{value} ({reason})" if reason else value


def _first_last(
    first: float | None,
    last: float | None,
    first_step: int | None = None,
    last_step: int | None = None,
) -> str:
    if first is None or last is None:
        return "-"
    if first_step is None:
        return f"{first:.4f} → {last:.4f}"
    return f"{first:.4f} (step {first_step}) → {last:.4f} (step {last_step})"
