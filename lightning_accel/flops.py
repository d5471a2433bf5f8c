"""Counting a model's floating-point operations: torch's FLOP counter, taught the CPU's
fused attention kernel, and the cost of a training step in forward passes."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

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


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the CPU's fused attention kernel (it knows the CUDA ones
    only, and would count no FLOPs for attention on a CPU)."""
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: _cpu_attention_flops})
