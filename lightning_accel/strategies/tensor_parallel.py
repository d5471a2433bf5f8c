"""Tensor parallelism without user code: which modules are split and how (a plan the
model declares, one given in config, or one found by shape), checked against the tensor
parallel size, then applied with torch's ``parallelize_module``.

Plans map module paths (``*`` globs, wrappers such as activation checkpointing left out)
to a style: ``colwise`` (output features split; the attention's query/key/value and the
MLP's up-projection), ``rowwise`` (input features split; the attention's output and the
MLP's down-projection), ``sequence_parallel`` (norms compute on a slice of the sequence)
and ``replicate`` (kept whole on every rank). Modules a plan does not name are replicated.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from lightning_accel.errors import ConfigError
from lightning_accel.optimize.blocks import find_repeated_blocks

PLAN_KEY = "hardware.strategy_options.tensor_parallel_plan"
SIZE_KEY = "hardware.strategy_options.tensor_parallel"
STYLES = ("colwise", "rowwise", "sequence_parallel", "replicate")
# path segments that model transforms insert (activation checkpointing, torch.compile)
WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module", "_orig_mod")
# attributes attention modules keep their head counts in; divided by the TP size
HEAD_COUNTS = ("n_head", "n_heads", "num_heads", "num_attention_heads", "n_kv_heads")
NORMS = (nn.LayerNorm, nn.RMSNorm)


@dataclass(frozen=True)
class TensorParallelPlan:
    """Which modules of a model tensor parallelism splits.

    Args:
        styles: module path (without wrapper segments) -> style, one entry per module.
        blocks: paths of the repeated blocks, in order; with ``sequence_parallel`` the
            activations between the first block's input and the last block's output are
            split along the sequence.
        sequence_parallel: whether norms run on sequence slices (the plan names some).
    """

    styles: dict[str, str]
    blocks: tuple[str, ...]
    sequence_parallel: bool


def canonical_path(path: str) -> str:
    """``path`` without the segments activation checkpointing and compile insert."""
    return ".".join(part for part in path.split(".") if part not in WRAPPER_SEGMENTS)


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module path (without wrapper segments) -> the innermost module at that path."""
    return {canonical_path(name): module for name, module in model.named_modules() if name}


def _paths(model: nn.Module) -> dict[int, str]:
    """id of every module, wrappers included -> its path without wrapper segments."""
    return {id(module): canonical_path(name) for name, module in model.named_modules() if name}


@runtime_checkable
class DeclaresTensorParallelPlan(Protocol):
    """A module that declares how tensor parallelism splits it (a class attribute): module
    path glob (relative to the module) -> ``colwise``, ``rowwise``, ``sequence_parallel`` or
    ``replicate`` (see :class:`~lightning_accel.models.gpt.GPT`)."""

    tensor_parallel_plan: Mapping[str, str]


def declared_plan(model: nn.Module) -> dict[str, str] | None:
    """The plan a module of ``model`` declares (:class:`DeclaresTensorParallelPlan`), with
    the paths made relative to ``model``."""
    for path, module in [("", model), *_modules(model).items()]:
        if not isinstance(module, DeclaresTensorParallelPlan):
            continue
        plan = module.tensor_parallel_plan
        if isinstance(plan, Mapping):
            prefix = f"{path}." if path else ""
            return {prefix + pattern: style for pattern, style in plan.items()}
    return None


def plan_needed(reason: str) -> ConfigError:
    """The refusal of a model whose tensor parallel plan cannot be found by shape, for
    ``reason``, saying what the shape rule looks for and what to do instead."""
    return ConfigError(
        PLAN_KEY,
        "{}",
        f"is needed: {reason}; a plan is found by shape only in repeated transformer blocks "
        "(a LayerNorm or RMSNorm, and linear layers reading and writing its width), so give one "
        "({module glob: colwise|rowwise}) or train with data parallelism (ddp, fsdp2)",
    )


def plan_by_shape(model: nn.Module) -> dict[str, str]:
    """A plan for blocks that follow the usual attention/MLP pattern: in each child of a
    block, the linear layers reading the block's width are split by output (``colwise``)
    and the last one writing it back by input (``rowwise``); the block's norms run
    sequence parallel when every module with parameters in the block is covered and the
    block takes one input.

    Raises:
        ConfigError: no repeated blocks, a block without that pattern, or an attention
            module with one fused query/key/value projection (its layout is unknown).
    """
    blocks = find_repeated_blocks(model)
    names = _paths(model)
    if not blocks:
        raise plan_needed(f"{type(model).__name__} has no repeated blocks")
    plan: dict[str, str] = {}
    for block in blocks:
        prefix = names[id(block)]
        plan.update({f"{prefix}.{path}": style for path, style in _block_plan(block).items()})
    return plan


def _unwrapped(module: nn.Module) -> nn.Module:
    """The module inside activation checkpointing and compile wrappers."""
    for segment in WRAPPER_SEGMENTS:
        inner = getattr(module, segment, None)
        if isinstance(inner, nn.Module):
            return _unwrapped(inner)
    return module


def _block_plan(block: nn.Module) -> dict[str, str]:
    block = _unwrapped(block)
    inner = _modules(block)
    norms = [path for path, module in inner.items() if isinstance(module, NORMS)]
    if not norms:
        raise plan_needed(f"{type(block).__name__} has no LayerNorm or RMSNorm to size it by")
    width = inner[norms[0]].weight.shape[-1]
    styles: dict[str, str] = {}
    for child_name, child in block.named_children():
        linears = [
            (f"{child_name}.{path}" if path else child_name, module)
            for path, module in [("", child), *_modules(child).items()]
            if isinstance(module, nn.Linear)
        ]
        outputs = [path for path, linear in linears if linear.out_features == width]
        if not outputs:
            continue
        split = [path for path, linear in linears if linear.in_features == width]
        split = [path for path in split if path != outputs[-1]]
        if any(hasattr(child, name) for name in HEAD_COUNTS) and len(split) == 1:
            raise plan_needed(
                f"{type(child).__name__} projects query, key and value with one layer, whose "
                "layout cannot be told by shape"
            )
        styles.update({path: "colwise" for path in split})
        styles[outputs[-1]] = "rowwise"
    if not styles:
        raise plan_needed(f"{type(block).__name__} has no attention/MLP pattern")
    covered = set(styles) | set(norms)
    with_parameters = {
        path
        for path, module in inner.items()
        if any(True for _ in module.parameters(recurse=False))
    }
    required = [
        p
        for p in inspect.signature(block.forward).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    ]
    if with_parameters <= covered and len(required) == 1:
        styles.update({path: "sequence_parallel" for path in norms})
    return styles


def resolve_plan(
    model: nn.Module, configured: Mapping[str, str] | None = None
) -> TensorParallelPlan:
    """The plan for ``model``: ``configured`` (globs) if given, else the one it declares,
    else one found by shape; each glob resolved to the modules it matches.

    Raises:
        ConfigError: an unknown style, or a glob that matches no module.
    """
    patterns = dict(configured or {}) or declared_plan(model) or plan_by_shape(model)
    modules = _modules(model)
    styles: dict[str, str] = {}
    for pattern, style in patterns.items():
        if style not in STYLES:
            raise ConfigError(f"{PLAN_KEY}.{pattern}", style, "is not a style", STYLES)
        matched = [path for path in modules if fnmatch.fnmatchcase(path, pattern)]
        if not matched:
            examples = [p for p in modules if isinstance(modules[p], (nn.Linear, *NORMS))][:6]
            raise ConfigError(PLAN_KEY, pattern, "matches no module of the model", examples)
        styles.update(dict.fromkeys(matched, style))
    names = _paths(model)
    blocks = tuple(names[id(block)] for block in find_repeated_blocks(model))
    return TensorParallelPlan(styles, blocks, "sequence_parallel" in styles.values())


def check_divisible(model: nn.Module, plan: TensorParallelPlan, size: int) -> None:
    """Fail unless the tensor parallel ``size`` divides every split width and head count.

    Raises:
        ConfigError: naming ``tensor_parallel`` and the module whose width it does not divide.
    """
    modules = _modules(model)
    for path, style in plan.styles.items():
        module = modules[path]
        if style in ("colwise", "rowwise") and not isinstance(module, (nn.Linear, nn.Embedding)):
            raise ConfigError(
                f"{PLAN_KEY}.{path}",
                style,
                f"needs a Linear or Embedding, not {type(module).__name__}",
            )
        width = _split_width(module, style)
        if width is not None and width % size:
            raise ConfigError(
                SIZE_KEY, size, f"does not divide the width {width} of {path}", _divisors(width)
            )
    for path, name, heads in _head_counts(modules, plan):
        if heads % size:
            raise ConfigError(
                SIZE_KEY, size, f"does not divide {path}.{name}={heads}", _divisors(heads)
            )


def split_parameters(model: nn.Module, plan: TensorParallelPlan) -> list[nn.Parameter]:
    """The parameters ``plan`` divides between the ranks: column-wise weights and biases,
    row-wise weights (a row-wise bias is added once, whole)."""
    modules = _modules(model)
    split: list[nn.Parameter] = []
    for path, style in plan.styles.items():
        if style == "colwise":
            split += modules[path].parameters(recurse=False)
        elif style == "rowwise":
            split.append(modules[path].weight)
    return split


def dividing_sizes(
    model: nn.Module, plan: TensorParallelPlan, candidates: Sequence[int]
) -> tuple[int, ...]:
    """The ``candidates`` that divide every width and head count ``plan`` splits."""
    sizes = []
    for size in candidates:
        try:
            check_divisible(model, plan, size)
        except ConfigError:
            continue
        sizes.append(size)
    return tuple(sizes)


def _split_width(module: nn.Module, style: str) -> int | None:
    if isinstance(module, nn.Linear):
        return {"colwise": module.out_features, "rowwise": module.in_features}.get(style)
    if isinstance(module, nn.Embedding):
        return {"colwise": module.embedding_dim, "rowwise": module.num_embeddings}.get(style)
    return None


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, min(number, 64) + 1) if number % d == 0]


def _head_counts(
    modules: dict[str, nn.Module], plan: TensorParallelPlan
) -> list[tuple[str, str, int]]:
    """(module path, attribute, count) for the head counts of modules that own a split layer."""
    owners = {path.rpartition(".")[0] for path, style in plan.styles.items() if style == "colwise"}
    return [
        (owner, name, getattr(modules[owner], name))
        for owner in sorted(owners)
        if owner in modules
        for name in HEAD_COUNTS
        if isinstance(getattr(modules[owner], name, None), int)
    ]


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh, plan: TensorParallelPlan) -> None:
    """Split ``model`` over the tensor-parallel ``mesh`` as ``plan`` says, divide the head
    counts of split attention modules, and make every other parameter a replicated DTensor
    (so gradient clipping and FSDP2 see one kind of parameter)."""
    modules = _modules(model)
    size = mesh.size()
    for owner, name, heads in _head_counts(modules, plan):
        setattr(modules[owner], name, heads // size)
    sequence = Shard(1) if plan.sequence_parallel else Replicate()
    styles = {
        "colwise": ColwiseParallel(input_layouts=sequence),
        "rowwise": RowwiseParallel(output_layouts=sequence),
        "sequence_parallel": SequenceParallel(),
    }
    for path, style in plan.styles.items():
        if style in styles:
            parallelize_module(modules[path], mesh, styles[style])
    if plan.sequence_parallel and plan.blocks:
        # the residual stream is split along the sequence from the first block to the last
        first, last = modules[plan.blocks[0]], modules[plan.blocks[-1]]
        parallelize_module(
            first,
            mesh,
            PrepareModuleInput(
                input_layouts=(Replicate(),),
                desired_input_layouts=(Shard(1),),
                use_local_output=True,
            ),
        )
        parallelize_module(
            last,
            mesh,
            PrepareModuleOutput(
                output_layouts=(Shard(1),),
                desired_output_layouts=(Replicate(),),
                use_local_output=True,
            ),
        )
    replicated: dict[int, nn.Parameter] = {}
    for module in model.modules():
        plain = [p for p in module.parameters(recurse=False) if not isinstance(p, DTensor)]
        if plain:
            _replicate(module, mesh, replicated)


def _replicate(module: nn.Module, mesh: DeviceMesh, replicated: dict[int, nn.Parameter]) -> None:
    """Make ``module``'s own parameters replicated DTensors (a parameter shared with another
    module, such as tied embeddings, stays shared), taking and returning plain tensors."""

    def partition(name: str, submodule: nn.Module, device_mesh: DeviceMesh) -> None:
        if submodule is not module:
            return
        for key, parameter in list(module._parameters.items()):
            if parameter is None or isinstance(parameter, DTensor):
                continue
            if id(parameter) not in replicated:
                tensor = distribute_tensor(parameter.data, device_mesh, [Replicate()])
                replicated[id(parameter)] = nn.Parameter(tensor, parameter.requires_grad)
            module.register_parameter(key, replicated[id(parameter)])

    def as_dtensors(
        _: nn.Module, inputs: tuple[Any, ...], device_mesh: DeviceMesh
    ) -> tuple[Any, ...]:
        return tuple(
            DTensor.from_local(x, device_mesh, [Replicate()], run_check=False)
            if _is_plain_tensor(x)
            else x
            for x in inputs
        )

    def as_local(_: nn.Module, outputs: Any, device_mesh: DeviceMesh) -> Any:
        if isinstance(outputs, DTensor):
            return outputs.to_local()
        if isinstance(outputs, tuple):
            return tuple(o.to_local() if isinstance(o, DTensor) else o for o in outputs)
        return outputs

    distribute_module(module, mesh, partition, as_dtensors, as_local)


def _is_plain_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not isinstance(value, DTensor)
