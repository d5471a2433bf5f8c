"""Watching XLA graph compilations: after warm-up, a new one means a shape or a Python value
changed between steps, and every step may pay a compilation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.accelerators import XLAAccelerator
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_accel.errors import ConfigError


class RecompilationError(RuntimeError):
    """Raised by :class:`XLARecompileGuard` with ``action="fail"``."""


def _xla_compilations() -> tuple[int, float]:
    from lightning_accel.xla import runtime

    return runtime.compilations()


class XLARecompileGuard(pl.Callback):
    """On XLA accelerators (idle elsewhere), reads torch_xla's compilation count before and
    after every ``check_every_n_steps``-th training step; once warm-up has passed, a
    compilation inside a step warns or fails (``action``) naming the step and the count.
    Compilations outside steps (validation, checkpoint saving) are not a step's. The
    compilation count and time go into the run summary.

    Warm-up is the first ``warmup_steps`` steps the process trains (a resumed run compiles
    its graphs again, from whatever step it resumes at) and the first
    ``warmup_validations`` validations with the step after each: measured on the GPT
    recipe, the step graph takes a new form after each of the first two validations (they
    leave metric and logging tensors in new forms), then none.

    Args:
        warmup_steps: steps whose compilations are expected.
        warmup_validations: validations (each with the step after it) whose compilations
            are expected.
        check_every_n_steps: how often the metrics are read (reading them costs little and
            does not wait for the device).
        action: ``"warn"`` or ``"fail"``.
    """

    def __init__(
        self,
        warmup_steps: int = 3,
        warmup_validations: int = 2,
        check_every_n_steps: int = 1,
        action: Literal["warn", "fail"] = "warn",
        read_metrics: Callable[[], tuple[int, float]] = _xla_compilations,
    ) -> None:
        if action not in ("warn", "fail"):
            raise ConfigError(
                "callbacks.recompile_guard.action", action, "is not an action", ["warn", "fail"]
            )
        self.warmup_steps = warmup_steps
        self.warmup_validations = warmup_validations
        self.check_every_n_steps = check_every_n_steps
        self.action = action
        self.read_metrics = read_metrics
        self._before_step: int | None = None
        self.compilations = 0
        self.compile_seconds = 0.0
        self._validations = 0
        self._after_warmup_validation = False
        self._first_step = 0
        self.active = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.active = isinstance(trainer.accelerator, XLAAccelerator)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_step = trainer.global_step  # past 0 where the run resumed

    def _checked(self, trainer: pl.Trainer) -> bool:
        return self.active and trainer.global_step % self.check_every_n_steps == 0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._checked(trainer):
            self._before_step = self.read_metrics()[0]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # counted inside the step only: saving checkpoints and validating compile their
        # own small programs, which say nothing about the step's graph
        if not self._checked(trainer) or self._before_step is None:
            return
        before, self._before_step = self._before_step, None
        self.compilations, self.compile_seconds = self.read_metrics()
        step = trainer.global_step
        warming_up = step - self._first_step <= self.warmup_steps or self._after_warmup_validation
        self._after_warmup_validation = False
        new = self.compilations - before
        if new <= 0 or warming_up:
            return
        message = (
            f"XLA compiled {new} new graph(s) in training step {step} after warm-up "
            f"({self.compilations} in all): a shape or a Python value changes between steps"
        )
        if self.action == "fail":
            raise RecompilationError(message)
        rank_zero_warn(message)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and not trainer.sanity_checking:
            self._validations += 1
            # the step after a warm-up validation compiles its own variant of the step graph
            self._after_warmup_validation = self._validations <= self.warmup_validations

    def summary_figures(self) -> dict[str, Any]:
        """The figures the run summary reports (none off XLA)."""
        if not self.active:
            return {}
        self.compilations, self.compile_seconds = self.read_metrics()
        return {
            "xla_compilations": self.compilations,
            "xla_compile_seconds": round(self.compile_seconds, 3),
        }
