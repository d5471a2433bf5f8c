"""DDP communication hooks chosen by name; every one runs on gloo (CPU) as well as NCCL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from lightning_accel.errors import ConfigError

COMM_HOOKS = ("none", "fp16", "bf16", "powersgd")

CommHook = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]


def compress_hook(dtype: torch.dtype) -> CommHook:
    """A hook that all-reduces each gradient bucket in ``dtype`` and restores its own dtype.

    torch's ``bf16_compress_hook`` refuses anything but NCCL; this one does the same
    arithmetic (divide by the world size, reduce in low precision) on any backend.
    """

    def hook(
        process_group: dist.ProcessGroup | None, bucket: dist.GradBucket
    ) -> torch.futures.Future:
        group = process_group if process_group is not None else dist.group.WORLD
        buffer = bucket.buffer()
        compressed = buffer.to(dtype).div_(dist.get_world_size(group))
        future = dist.all_reduce(compressed, group=group, async_op=True).get_future()

        def decompress(done: torch.futures.Future) -> torch.Tensor:
            buffer.copy_(done.value()[0])
            return buffer

        return future.then(decompress)

    hook.__name__ = f"{str(dtype).removeprefix('torch.')}_compress_hook"
    return hook


def resolve_comm_hook(
    name: str, powersgd_rank: int = 1, powersgd_start_iter: int = 10
) -> tuple[Any, CommHook | None]:
    """The ``(state, hook)`` pair for a hook name; ``(None, None)`` for ``"none"``.

    Raises:
        ConfigError: an unknown name, or a PowerSGD rank below 1.
    """
    if name == "none":
        return None, None
    if name == "fp16":
        return None, compress_hook(torch.float16)
    if name == "bf16":
        return None, compress_hook(torch.bfloat16)
    if name == "powersgd":
        if powersgd_rank < 1:
            raise ConfigError(
                "hardware.strategy_options.powersgd_rank", powersgd_rank, "must be 1 or more"
            )
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=powersgd_rank,
            start_powerSGD_iter=powersgd_start_iter,
        )
        return state, powerSGD_hook.powerSGD_hook
    raise ConfigError(
        "hardware.strategy_options.comm_hook", name, "is not a communication hook", COMM_HOOKS
    )
