"""Activation checkpointing whose recomputation leaves running statistics alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from torch import nn


def tracks_running_statistics(layer: nn.Module) -> bool:
    """Whether ``layer`` keeps running statistics in fp32 buffers that training updates
    (BatchNorm, InstanceNorm with ``track_running_stats``)."""
    return bool(getattr(layer, "track_running_stats", False)) and (
        getattr(layer, "num_batches_tracked", None) is not None
    )


def tracking_layers(module: nn.Module) -> list[nn.Module]:
    """The layers of ``module`` (itself included) that keep running statistics."""
    return [m for m in module.modules() if tracks_running_statistics(m)]


@contextmanager
def running_statistics_frozen(layers: list[nn.Module]) -> Iterator[None]:
    """Run ``layers`` as in training with their running statistics left as they are: a
    momentum of 0 keeps mean and variance (the same kernels run and save the same tensors,
    which non-reentrant checkpointing verifies), and the batch count is put back."""
    kept = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, batches) in zip(layers, kept, strict=True):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(batches)


def statistics_once(checkpoint_fn: Callable[..., Any], block: nn.Module) -> Callable[..., Any]:
    """``checkpoint_fn`` (``torch.utils.checkpoint.checkpoint``, torch_xla's) for ``block``,
    whose recomputation in the backward runs with the block's running statistics frozen:
    the forward runs the block twice, and BatchNorm updated its running mean and variance
    at both, so a checkpointed model validated with other statistics than the same model
    trained without checkpointing. The recomputation uses the batch's statistics, as the
    first run did, so gradients are unchanged."""
    layers = tracking_layers(block)

    def checkpointed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        runs = 0

        def counted(*inner_args: Any, **inner_kwargs: Any) -> Any:
            nonlocal runs
            runs += 1
            frozen = running_statistics_frozen(layers) if runs > 1 else nullcontext()
            with frozen:
                return function(*inner_args, **inner_kwargs)

        return checkpoint_fn(counted, *args, **kwargs)

    return checkpointed
