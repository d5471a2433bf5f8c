"""Precision on XLA devices under the pack's precision names, with dtypes and autocast
rather than process-wide environment switches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.plugins.precision import XLAPrecision
from torch import nn
from typing_extensions import override

from lightning_accel.errors import ConfigError

XLA_PRECISIONS = ("32-true", "bf16-true", "bf16-mixed")


class AccelXLAPrecision(XLAPrecision):
    """XLA precision plugin for ``32-true``, ``bf16-true`` (weights and float inputs cast to
    bf16) and ``bf16-mixed`` (fp32 weights, ``torch.autocast("xla", bfloat16)`` around
    forward passes). Keeps Lightning's XLA optimizer step (gradient reduction across
    processes, then a graph cut), but sets no ``XLA_USE_BF16``-style environment variable,
    so a precision choice never leaks into other code in the process."""

    def __init__(self, precision: str = "32-true") -> None:  # noqa: D107 - see the class
        if precision not in XLA_PRECISIONS:
            raise ConfigError(
                "optimization.precision", precision, "cannot run on XLA", XLA_PRECISIONS
            )
        self.precision = precision  # type: ignore[assignment]
        self._desired_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32

    @override
    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(torch.bfloat16) if self.precision == "bf16-true" else module

    @override
    def convert_input(self, data: Any) -> Any:
        if self.precision != "bf16-true":
            return data
        return apply_to_collection(
            data, torch.Tensor, lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t
        )

    @override
    def optimizer_step(self, optimizer: Any, model: Any, closure: Any, **kwargs: Any) -> Any:
        _keep_optimizer_on_device(optimizer, model.device)
        return super().optimizer_step(optimizer, model, closure, **kwargs)

    @contextmanager
    @override
    def forward_context(self) -> Iterator[None]:
        if self.precision == "bf16-mixed":
            with torch.autocast("xla", dtype=torch.bfloat16):
                yield
        else:
            yield


def _keep_optimizer_on_device(optimizer: Any, device: torch.device) -> None:
    """Keep an Adam-family optimizer's per-step values on the device. A Python number
    (the learning rate a schedule changes, the step count Adam reads back with ``.item()``
    unless it is capturable) is traced into the graph as a constant, so every step would
    compile a new graph; torch's schedulers update a tensor rate in place. Also run after a
    checkpoint load, which brings the rates back as host values."""
    for group in getattr(optimizer, "param_groups", []):
        if "capturable" not in group:  # optimizers without a device-side update path
            continue
        group["capturable"] = True
        rate = group["lr"]
        if not isinstance(rate, torch.Tensor) or rate.device != device:
            group["lr"] = torch.as_tensor(rate, dtype=torch.float32).to(device)
