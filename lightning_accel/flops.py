"""Counting a model's floating-point operations: torch's FLOP counter, taught the CPU's
fused attention kernel, and the cost of a training step in forward passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count, shape_wrapper

# A training step costs about three forward passes: the backward pass computes gradients
# of both activations and weights, two matmuls for each one of the forward pass.
STEP_FLOPS_PER_FORWARD_FLOP = 3


def _cpu_attention_flops(
    query_shape: torch.Size,
    key_shape: torch.Size,
    value_shape: torch.Size,
    *args: Any,
    **kwargs: Any,
) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _local(value: Any) -> Any:
    return value.to_local() if isinstance(value, DTensor) else value


def _on_this_device(formula: Callable[..., int]) -> Callable[..., int]:
    """``formula`` applied to the shards this device holds: an operation on split (tensor
    parallel) tensors is counted by the part each device computes, not the whole."""

    def count(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        args, kwargs, out_val = tree_map(_local, (args, kwargs, out_val))
        return formula(*args, out_val=out_val, **kwargs)

    count._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors, not shapes
    return count


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, counting what this device computes (the local shards of
    distributed tensors) and taught the CPU's fused attention kernel (it knows the CUDA
    ones only, and would count no FLOPs for attention on a CPU)."""
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    formulas = {**flop_registry, cpu_attention: shape_wrapper(_cpu_attention_flops)}
    mapping = {op: _on_this_device(formula) for op, formula in formulas.items()}
    return FlopCounterMode(display=False, custom_mapping=mapping)
