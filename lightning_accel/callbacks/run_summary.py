"""Collects what a run achieved and writes it as ``summary.json`` plus a table for people."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_accel.callbacks.logged_steps import unread_logged_step
from lightning_accel.early_stopping import fit_stopped_early
from lightning_accel.files import write_text_whole
from lightning_accel.memory import model_state_bytes
from lightning_accel.optimize.memory_format import NO_CONVOLUTIONS


@runtime_checkable
class ReportsSummaryFigures(Protocol):
    """A callback or strategy whose figures go into the run summary (the speed monitor, the
    XLA recompile guard, checkpoint saving)."""

    def summary_figures(self) -> dict[str, Any]:
        """Figures for ``summary.json``, by name."""
        ...


@runtime_checkable
class CountsAllreduceBytes(Protocol):
    """A strategy that knows the gradient bytes each rank sends per optimizer step."""

    def allreduce_bytes_per_step(self) -> float | None:
        """Bytes all-reduced per rank and optimizer step (``None``: unknown)."""
        ...


class RunSummary(pl.Callback):
    """Records losses, validation metrics, model state sizes and output paths, adds the
    figures other callbacks and the strategy report (the speed monitor's throughput and
    MFU, the XLA recompile guard's compilations, time spent saving checkpoints), then
    writes ``summary.json`` and prints a table when fitting ends (rank 0 only).

    The losses, validations and attempts recorded so far go into every checkpoint
    (Lightning's callback state), so the summary of a run resumed from one covers the
    whole run: its first loss, every validation and each attempt's start and wall time.
    Speed figures, memory and ``wall_seconds`` describe the attempt that wrote it.

    Args:
        output_dir: where ``summary.json`` goes; default the trainer's ``default_root_dir``.
        extra: fixed facts to add to the summary (recipe, profiles, ...).
        print_table: whether to print the rich table.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        extra: dict[str, Any] | None = None,
        print_table: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.extra = dict(extra or {})
        self.print_table = print_table
        self.summary: dict[str, Any] = {}
        self._restored: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self.validations: list[dict[str, float]] = []
        self.train_losses: list[float] = []
        self.earlier_attempts: list[dict[str, float]] = []
        self._fit_started = 0.0
        self._started_at_step = 0
        self.memory: dict[str, Any] = {}
        self._gradient_bytes: int | None = None
        self._loss_read_at_step: int | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "train_losses": self.train_losses[:1] + self.train_losses[1:][-1:],  # first, last
            "loss_read_at_step": self._loss_read_at_step,
            "validations": list(self.validations),
            "attempts": [*self.earlier_attempts, self._attempt()],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # kept until on_train_start: Lightning restores callbacks before on_fit_start, or
        # after it for strategies that restore once set up (FSDP2's)
        self._restored = dict(state_dict)

    def _attempt(self) -> dict[str, float]:
        """This attempt's start and its wall time so far."""
        seconds = round(time.perf_counter() - self._fit_started, 3)
        return {"from_step": self._started_at_step, "wall_seconds": seconds}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self._fit_started = time.perf_counter()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started_at_step = trainer.global_step  # the loops are restored by now
        restored, self._restored = self._restored, None
        if restored is None:
            return
        if not _is_record(restored):
            rank_zero_warn(
                "the checkpoint's run summary record is not one RunSummary writes; the"
                f" summary starts at step {trainer.global_step}"
            )
            return
        self.train_losses = list(restored["train_losses"])
        self._loss_read_at_step = restored["loss_read_at_step"]
        self.validations = list(restored["validations"])
        self.earlier_attempts = list(restored["attempts"])

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_validation(trainer)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step, last = trainer.global_step, self._loss_read_at_step
        # the first optimizer step's loss too; none during the first window (step 0)
        first = step == 1 and step != last
        if first or (step > 0 and unread_logged_step(step, trainer.log_every_n_steps, last)):
            self._read_loss(trainer, outputs)

    def _read_loss(self, trainer: pl.Trainer, outputs: Any) -> None:
        self._loss_read_at_step = trainer.global_step
        # the logged value is synced over ranks when the module asks for it; the raw one is not
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.train_losses.append(float(loss))

    def _record_validation(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if metrics:
            self.validations.append({"step": trainer.global_step, **metrics})

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._gradient_bytes is None:  # gradients exist only here; measured once
            self._gradient_bytes = model_state_bytes(pl_module.parameters(), [])["gradients"]

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started_at_step < trainer.global_step != self._loss_read_at_step:
            self._read_loss(trainer, None)  # the last step's loss, between logging steps
        # Measured while the process group is still up: every rank contributes its figures.
        state = model_state_bytes(pl_module.parameters(), trainer.optimizers)
        state["gradients"] = self._gradient_bytes or 0
        mine = torch.tensor(
            [sum(state.values())],
            dtype=torch.float64,
            device=trainer.strategy.root_device,  # NCCL gathers GPU tensors only
        )
        everyone = trainer.strategy.all_gather(mine).reshape(-1).cpu()
        strategy = trainer.strategy
        counts = isinstance(strategy, CountsAllreduceBytes)
        self.memory = {
            "model_state_bytes": state,
            "model_state_bytes_per_rank": [int(v) for v in everyone.tolist()],
            "allreduce_bytes_per_step": strategy.allreduce_bytes_per_step() if counts else None,
        }

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._restored = None  # a fit that ended before training started used none of it
        world, attempt = trainer.world_size, self._attempt()
        self.summary = {
            **self.extra,
            "steps": trainer.global_step,
            "stopped_early": fit_stopped_early(trainer),
            "wall_seconds": attempt["wall_seconds"],
            "resumed_from_step": attempt["from_step"] or None,
            "attempts": [*self.earlier_attempts, attempt],
            "world_size": world,
            # torch elastic's restarts of every rank before the one that finished
            "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "strategy": getattr(trainer.strategy, "strategy_name", type(trainer.strategy).__name__),
            "precision": str(trainer.precision),
            "first_train_loss": self.train_losses[0] if self.train_losses else None,
            "last_train_loss": self.train_losses[-1] if self.train_losses else None,
            "validation": self.validations,
            **self.memory,
            **{
                k: v
                for c in [*trainer.callbacks, trainer.strategy]
                if isinstance(c, ReportsSummaryFigures)
                for k, v in c.summary_figures().items()
            },
            "loader": _loader_settings(trainer),
            "checkpoint": _checkpoint_path(trainer),
            "metrics": _metrics_path(trainer),
        }
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer) -> None:
        path = Path(self.output_dir or trainer.default_root_dir) / "summary.json"
        write_text_whole(path, json.dumps(self.summary, indent=2) + "\n")
        self.summary["summary"] = str(path)
        if self.print_table:
            Console(stderr=True).print(summary_table(self.summary))


def _is_record(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's RunSummary state has the form :meth:`RunSummary.state_dict`
    writes (a checkpoint is data from anywhere; the summary formats these as numbers)."""

    def numbers(entry: Any, keys: set[str] | None = None) -> bool:
        return (
            isinstance(entry, dict)
            and (keys is None or set(entry) == keys)
            and all(isinstance(k, str) and isinstance(v, int | float) for k, v in entry.items())
        )

    losses, read_at = state.get("train_losses"), state.get("loss_read_at_step")
    validations, attempts = state.get("validations"), state.get("attempts")
    return (
        isinstance(losses, list)
        and all(isinstance(loss, float) for loss in losses)
        and (read_at is None or isinstance(read_at, int))
        and isinstance(validations, list)
        and all(numbers(v) and "step" in v for v in validations)
        and isinstance(attempts, list)
        and all(numbers(a, {"from_step", "wall_seconds"}) for a in attempts)
    )


def _loader_settings(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The training DataLoader's worker and memory settings, as the run used them."""
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        return None
    return {
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "persistent_workers": loader.persistent_workers,
    }


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
        ("strategy", _with_reason(summary["strategy"], summary.get("strategy_reason"))),
        ("steps", _with_reason(str(summary["steps"]), _early_stop(summary))),
        ("wall time", _wall_time(summary)),
        ("precision", _with_reason(summary["precision"], summary.get("precision_reason"))),
    ]
    if summary.get("compile_reason"):
        compiled = "on" if summary.get("compile") else "off"
        rows.append(("compile", _with_reason(compiled, summary["compile_reason"])))
    if summary.get("fp8"):
        fp8 = summary["fp8"]
        layers = f"{fp8['recipe']}, {len(fp8['layers'])} Linear layers, {len(fp8['kept'])} kept"
        rows.append(("fp8", _with_reason(layers, fp8["reason"])))
    elif summary.get("fp8_reason"):
        rows.append(("fp8", _with_reason("off", summary["fp8_reason"])))
    if summary.get("channels_last_reason") not in (None, NO_CONVOLUTIONS):
        on = "on" if "channels_last" in (summary.get("transforms") or ()) else "off"
        rows.append(("channels-last", _with_reason(on, summary["channels_last_reason"])))
    if summary.get("micro_batch_reason"):
        accumulate = summary.get("accumulate_grad_batches")
        rows.append(
            ("micro-batches", _with_reason(f"x{accumulate}", summary["micro_batch_reason"]))
        )
    rows += [
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
    if summary.get("mfu") is not None:
        rows.append(
            (
                "MFU",
                f"{summary['mfu']:.1%} of {summary['peak_tflops_per_device']:,.1f}"
                f" TFLOP/s ({summary['peak_flops_source']})",
            )
        )
    if summary.get("checkpoint_blocked_seconds"):
        mode = "asynchronous" if summary.get("checkpoint_async") else "synchronous"
        blocked = f"{summary['checkpoint_blocked_seconds']:.2f} s of training ({mode})"
        rows.append(("checkpoint saves", blocked))
    if summary.get("loader"):
        loader = summary["loader"]
        pinned = ", pinned" if loader["pin_memory"] else ""
        rows.append(("loader", f"{loader['num_workers']} worker(s) per rank{pinned}"))
    if summary.get("data_wait_share") is not None:
        rows.append(("waiting for data", f"{summary['data_wait_share']:.1%} of step time"))
    for key in ("checkpoint", "metrics", "summary"):
        if summary.get(key):
            rows.append((key, summary[key]))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    return table


def _wall_time(summary: dict[str, Any]) -> str:
    """This attempt's wall time, and where it resumed the run and what all attempts took."""
    text = f"{summary['wall_seconds']:.1f} s"
    if summary.get("resumed_from_step"):
        text += f" from step {summary['resumed_from_step']}"
    attempts = summary.get("attempts") or []
    if len(attempts) > 1:
        total = sum(attempt["wall_seconds"] for attempt in attempts)
        text += f" ({total:.1f} s in {len(attempts)} attempts)"
    return text


def _early_stop(summary: dict[str, Any]) -> str | None:
    reason = summary.get("stopped_early")
    return f"stopped early: {reason}" if reason else None


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
