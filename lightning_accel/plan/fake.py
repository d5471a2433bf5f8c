"""Running a model without memory: its tensors become fake CPU tensors (shapes, dtypes and
strides only), so a forward pass, autocast and an optimizer step run and allocate nothing.

This is the one module that touches torch's ``FakeTensorMode`` (``torch._subclasses``, an
upstream private API: the meta device alone cannot run CPU autocast). A test pins it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map


def fake_mode() -> FakeTensorMode:
    """A mode in which new tensors are fake; real (meta) tensors may be read for their shape."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def _fake_like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="cpu")


def fake_module(module: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Replace every parameter and buffer of ``module`` (built on the meta device) by a fake
    CPU tensor of the same shape, in place; tied parameters stay tied."""
    replaced: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with mode:
        for owner in module.modules():
            for store in (owner._parameters, owner._buffers):
                for name, tensor in list(store.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in replaced:
                        fake = _fake_like(tensor)
                        if isinstance(tensor, nn.Parameter):
                            fake = nn.Parameter(fake, requires_grad=tensor.requires_grad)
                        replaced[id(tensor)] = (tensor, fake)  # keeps the id's owner alive
                    store[name] = replaced[id(tensor)][1]
    return module


def fake_batch(batch: Any, mode: FakeTensorMode) -> Any:
    """The batch with each tensor replaced by a fake CPU tensor of its shape and dtype."""
    with mode:
        return tree_map(lambda t: _fake_like(t) if isinstance(t, torch.Tensor) else t, batch)
