"""Loading a whole checkpoint file (one process's, DDP's, a consolidated one) into a model
that FSDP2 or tensor parallelism has split across ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lightning_accel.checkpoints import optimizer_by_name
from lightning_accel.safe_load import load_data_file


def load_whole_checkpoint(
    path: Path, module: torch.nn.Module, optimizers: list[torch.optim.Optimizer], strict: bool
) -> dict[str, Any]:
    """Load the weights and optimizer states of the whole checkpoint ``path`` into the split
    ``module`` and its ``optimizers`` (rank 0's copy broadcast, each rank keeping its share);
    returns the rest of the checkpoint (loops, callbacks, schedulers), as Lightning's
    ``ModelParallelStrategy.load_checkpoint`` does.

    A whole file numbers each optimizer state by the parameter's position in its
    optimizer's param groups. Those are matched to parameter names through the optimizer
    itself: Lightning numbers them in ``module.parameters()`` order instead, which gives
    one parameter another's state (or a shape error) wherever the groups reorder the
    parameters, as weight-decay groups do.
    """
    checkpoint = load_data_file(path, mmap=True)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    set_model_state_dict(module, checkpoint.pop("state_dict"), options=options)
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    # validate, test and predict have no optimizers: the states are left unread
    for optimizer, state in zip(optimizers, checkpoint.get("optimizer_states", []), strict=False):
        named = optimizer_by_name(state, optimizer, names)
        set_optimizer_state_dict(module, optimizer, optim_state_dict=named, options=options)
    return checkpoint
