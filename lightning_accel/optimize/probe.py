"""Choosing by measuring: a few training steps of the real model on a real batch in each
candidate precision, and eager against compiled, keeping what is faster over the run."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_accel.config import CompileConfig
from lightning_accel.devices import synchronize
from lightning_accel.optimize.transforms import compile_model
from lightning_accel.precision import PrecisionChoice

# A reduced precision is kept only when it is clearly faster than fp32.
REQUIRED_SPEEDUP = 1.05


def _autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


@contextmanager
def _quiet() -> Iterator[None]:
    # training_step's self.log warns without a Trainer; that is expected here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def measure_step_seconds(module: pl.LightningModule, batch: Any, precision: str) -> float:
    """Seconds per training step of ``module`` on ``batch`` in ``precision``, after one
    warm-up step, on a copy of the module (see :func:`measure_step_times`)."""
    return measure_step_times(module, batch, precision).steady


def fastest_precision(
    candidate: PrecisionChoice,
    module: pl.LightningModule,
    batch: Any,
    measure: Callable[[pl.LightningModule, Any, str], float] = measure_step_seconds,
) -> PrecisionChoice:
    """Keep ``candidate`` (the hardware's reduced precision) only if it trains ``module``
    at least 5% faster than fp32 on ``batch``; otherwise fp32."""
    if candidate.precision == "32-true":
        return candidate
    timings = {p: measure(module, batch, p) for p in ("32-true", candidate.precision)}
    speedup = timings["32-true"] / timings[candidate.precision]
    measured = f"measured {speedup:.2f}x the speed of 32-true on this model"
    if speedup >= REQUIRED_SPEEDUP:
        return PrecisionChoice(candidate.precision, f"{candidate.reason}; {measured}")
    return PrecisionChoice("32-true", f"{candidate.precision} {measured}; kept 32-true")


@dataclass(frozen=True)
class StepTimes:
    """Seconds of a first training step (compilation included) and of each later one."""

    first: float
    steady: float


def measure_step_times(
    module: pl.LightningModule,
    batch: Any,
    precision: str,
    compile_config: CompileConfig | None = None,
    steps: int = 3,
) -> StepTimes:
    """Time ``module.training_step`` with backward on ``batch`` in ``precision``, on a copy
    of the module (it is not changed), compiled as ``compile_config`` says when given: the
    first step, then the mean of ``steps`` more."""
    model = copy.deepcopy(module).train()
    if compile_config is not None:
        compile_model(model, compile_config)
    device = next(model.parameters()).device
    if precision.endswith("-true") and precision != "32-true":
        model = model.to(torch.bfloat16 if precision.startswith("bf16") else torch.float16)

    def step() -> None:
        with _autocast(precision, device):
            output = model.training_step(batch, 0)
        loss = output["loss"] if isinstance(output, dict) else output
        loss.backward()
        model.zero_grad(set_to_none=True)

    with _quiet():
        started = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
    return StepTimes(first, (time.perf_counter() - started) / steps)


@dataclass(frozen=True)
class CompileChoice:
    """Whether a run compiles its model, and why."""

    enabled: bool
    reason: str


def compile_pays(
    module: pl.LightningModule,
    batch: Any,
    precision: str,
    compile_config: CompileConfig,
    run_steps: int,
    measure: Callable[..., StepTimes] = measure_step_times,
) -> CompileChoice:
    """Compile only if it pays over the run: the time compiled steps save over ``run_steps``
    steps must exceed the compilation's own time (the first compiled step's excess)."""
    eager = measure(module, batch, precision, None)
    compiled = measure(module, batch, precision, compile_config)
    compile_seconds = max(0.0, compiled.first - compiled.steady)
    speedup = eager.steady / compiled.steady
    saved = (eager.steady - compiled.steady) * run_steps
    measured = (
        f"compiled steps measured {speedup:.2f}x the speed of eager; {compile_seconds:.1f} s "
        f"of compilation against {max(saved, 0.0):.1f} s saved over {run_steps} steps"
    )
    if saved > compile_seconds:
        return CompileChoice(True, f"{measured}: compiled")
    return CompileChoice(False, f"{measured}: kept eager")
