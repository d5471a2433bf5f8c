"""Choosing a precision by measuring it: a few training steps of the real model on a real
batch in each candidate precision, and the faster one kept."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_accel.devices import synchronize
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


def measure_step_seconds(
    module: pl.LightningModule, batch: Any, precision: str, steps: int = 3
) -> float:
    """Seconds per forward and backward pass of ``module.training_step`` on ``batch`` in
    ``precision``, after one warm-up pass, on a copy of the module (it is not changed)."""
    model = copy.deepcopy(module).train()
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
        step()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
    return (time.perf_counter() - started) / steps


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
