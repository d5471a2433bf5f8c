"""DDP communication hooks chosen by name; every one runs on gloo (CPU) as well as NCCL."""

# No `from __future__ import annotations` here: DDP checks the hooks' annotations at runtime.
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from lightning_accel.errors import ConfigError

COMM_HOOKS = ("none", "fp16", "bf16", "powersgd")

CommHook = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]


@dataclass
class CommStats:
    """Bytes a hook has sent to all-reduce, summed over buckets and steps."""

    bytes: int = 0


def compress_hook(dtype: torch.dtype) -> CommHook:
    """A hook that all-reduces each gradient bucket in ``dtype`` and restores its own dtype;
    its state is a :class:`CommStats` that counts the bytes all-reduced.

    torch's ``bf16_compress_hook`` refuses anything but NCCL; this one does the same
    arithmetic (divide by the world size, reduce in low precision) on any backend.
    """

    def hook(stats: CommStats, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        group = dist.group.WORLD
        buffer = bucket.buffer()
        compressed = buffer.to(dtype).div_(dist.get_world_size(group))
        stats.bytes += compressed.numel() * compressed.element_size()
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
        return CommStats(), compress_hook(torch.float16)
    if name == "bf16":
        return CommStats(), compress_hook(torch.bfloat16)
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
