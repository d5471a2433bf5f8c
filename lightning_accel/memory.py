"""What a rank holds in memory: model state bytes (sharded or not) and peak process memory."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

from lightning_accel.xla import runtime as xla_runtime


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def model_state_bytes(
    parameters: Iterable[torch.nn.Parameter], optimizers: Iterable[torch.optim.Optimizer]
) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held by this process (a rank's
    own shard under FSDP2)."""
    parameters = list(parameters)
    optimizer_bytes = sum(
        _local_bytes(value)
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.ndim > 0
    )
    return {
        "parameters": sum(_local_bytes(p) for p in parameters),
        "gradients": sum(_local_bytes(p.grad) for p in parameters if p.grad is not None),
        "optimizer": optimizer_bytes,
    }


def peak_process_memory_mb() -> float:
    """The largest resident memory this process has had, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held for training, in MiB: allocated device memory
    on a CUDA device, the device's own peak on an XLA device that reports it (TPUs, GPUs),
    resident process memory everywhere else (the CPU, PJRT on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "xla":
        peak = xla_runtime.peak_memory_bytes(device)
        if peak is not None:
            return peak / 2**20
    return peak_process_memory_mb()
