"""Which modules FSDP2 shards, and sharding them: named classes or detected blocks, then root."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from lightning_accel.errors import ConfigError
from lightning_accel.optimize.blocks import find_repeated_blocks
from lightning_accel.optimize.recompute import tracks_running_statistics

SHARD_CLASSES_KEY = "hardware.strategy_options.shard_classes"
# A LightningModule's step methods: the root's parameters are gathered around each, as they
# are around forward, as Lightning's FSDP strategy gathers them around its wrapped steps.
STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


def _class_names(module: nn.Module) -> set[str]:
    """The module's class name, and its wrapped module's when activation checkpointing
    wrapped it, so that ``TransformerBlock`` still names a checkpointed block."""
    names = {type(module).__name__}
    inner = getattr(module, "_checkpoint_wrapped_module", None)
    if inner is not None:
        names.add(type(inner).__name__)
    return names


def shard_units(model: nn.Module, shard_classes: Sequence[str] = ()) -> list[nn.Module]:
    """The modules to shard before the root, innermost first.

    Args:
        model: the model (any LightningModule or nn.Module).
        shard_classes: class names to shard; empty means the repeated blocks found in
            the model (transformer layers, residual stages).

    Raises:
        ConfigError: ``shard_classes`` names no module of the model; the valid choices
            listed are the repeated block classes found in it.
    """
    if not shard_classes:
        return list(reversed(find_repeated_blocks(model)))
    wanted = set(shard_classes)
    units = [m for m in model.modules() if m is not model and _class_names(m) & wanted]
    if not units:
        found = sorted({type(b).__name__ for b in find_repeated_blocks(model)}) or ["(none)"]
        raise ConfigError(
            SHARD_CLASSES_KEY,
            list(shard_classes),
            f"matches no module of {type(model).__name__}",
            found,
        )
    return list(reversed(units))


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy | None:
    """FSDP2's policy for a Lightning precision name: ``bf16-mixed`` computes with bf16
    parameters and reduces gradients in fp32; other precisions need no policy."""
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def full_precision_units(model: nn.Module, policy: MixedPrecisionPolicy) -> list[nn.Module]:
    """The modules to shard on their own in fp32 under ``policy``'s lower ``param_dtype``:
    those with statistics in fp32 buffers (BatchNorm), whose kernels refused parameters cast
    to bf16 beside fp32 running statistics ("expected scalar type BFloat16 but found
    Float"). They compute in fp32 and hand on ``param_dtype``, as autocast runs them."""
    if policy.param_dtype in (None, torch.float32):
        return []
    return [m for m in model.modules() if m is not model and tracks_running_statistics(m)]


def shard_model(
    model: nn.Module,
    mesh: torch.distributed.device_mesh.DeviceMesh,
    shard_classes: Sequence[str] = (),
    reshard_after_forward: bool = True,
    precision: str = "32-true",
    cpu_offload: bool = False,
) -> int:
    """Apply ``fully_shard`` to the shard units, then to the root; returns how many units.

    A model that the user already sharded (in ``configure_model``) is left as it is.
    """
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return 0
    options: dict = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    policy = mixed_precision_policy(precision)
    if policy is not None:
        options["mp_policy"] = policy
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    units = shard_units(model, shard_classes)
    if policy is not None:
        in_full = MixedPrecisionPolicy(
            param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=policy.param_dtype
        )
        for layer in full_precision_units(model, policy):
            fully_shard(layer, **{**options, "mp_policy": in_full})
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)
    for method in STEP_METHODS:
        # a step may use the root's parameters without calling forward (self.net(x))
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    return len(units)
