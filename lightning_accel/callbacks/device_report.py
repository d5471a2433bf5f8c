"""Where a run computed and kept its state, for ``summary.json``: the device, the devices of
the parameters, optimizer state and metric states, the loss scaler and the memory format of
convolution weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.distributed.tensor import DTensor
from torchmetrics import Metric
from typing_extensions import override


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds (a sharded tensor's local shard)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def device_types(tensors: Iterable[torch.Tensor]) -> list[str]:
    """The device types (``cpu``, ``cuda``, ...) holding ``tensors``, sorted, each once."""
    return sorted({_local(t).device.type for t in tensors})


def _optimizer_states(optimizers: list[torch.optim.Optimizer]) -> list[torch.Tensor]:
    return [
        value
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0  # not the step counters
    ]


def channels_last(module: torch.nn.Module) -> bool | None:
    """Whether every 4-D parameter (a convolution's weight) is in channels-last memory
    format; None for a model without any."""
    weights = [_local(p) for p in module.parameters() if p.dim() == 4]
    if not weights:
        return None
    return all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


class DeviceReport(pl.Callback):
    """Reports, when training ends, where rank 0 computed and kept the run's state, into the
    run summary (:class:`~lightning_accel.callbacks.RunSummary` reads
    :meth:`summary_figures`): ``device`` (the strategy's root device, e.g. ``cuda:0``),
    ``device_name`` (the GPU's name, None elsewhere), ``parameters_on``,
    ``optimizer_state_on`` and ``metric_states_on`` (the device types holding each; a
    sharded tensor's local shard), ``loss_scaler`` (whether fp16 loss scaling is on) and
    ``channels_last`` (whether every convolution weight is channels-last; None without
    convolutions). ``lightning-accel verify`` checks CPU offload and channels-last with it.
    """

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = trainer.strategy.root_device
        metrics = [m for m in pl_module.modules() if isinstance(m, Metric)]
        self.figures = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "parameters_on": device_types(pl_module.parameters()),
            "optimizer_state_on": device_types(_optimizer_states(trainer.optimizers)),
            "metric_states_on": sorted({m.device.type for m in metrics}),
            "loss_scaler": getattr(trainer.precision_plugin, "scaler", None) is not None,
            "channels_last": channels_last(pl_module),
        }

    def summary_figures(self) -> dict[str, Any]:
        """The figures the run summary reports."""
        return self.figures
