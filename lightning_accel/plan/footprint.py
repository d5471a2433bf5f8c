"""What one training step of a model needs, measured without memory: parameter shapes,
optimizer state, the tensors the forward pass saves for backward (per precision and per
repeated block) and the FLOPs of a forward pass.

The model runs on fake tensors (:mod:`lightning_accel.plan.fake`): its own
``training_step`` (or ``forward`` on ``example_input_array``), its own optimizer from
``configure_optimizers``, one step of it, and nothing allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils._pytree import tree_map

from lightning_accel.errors import ConfigError
from lightning_accel.flops import flop_counter
from lightning_accel.optimize.blocks import find_repeated_blocks
from lightning_accel.plan.fake import fake_batch, fake_mode, fake_module

# Precisions whose activations are in a reduced type (measured under autocast).
_AUTOCAST = {
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
    "bf16-true": torch.bfloat16,
    "16-true": torch.float16,
}
# "-true" precisions hold parameters, gradients and optimizer state in the reduced type.
HALF_PRECISIONS = ("bf16-true", "16-true")


@dataclass(frozen=True)
class ActivationFootprint:
    """The tensors a forward pass keeps for backward, in one precision.

    Args:
        saved_bytes: every saved tensor's storage, once (parameters not counted).
        largest_bytes: the largest one.
        outside_largest_bytes: the largest one saved outside the repeated blocks.
        leading_bytes: saved outside and before the repeated blocks (kept until the end of
            backward; what follows the blocks is freed before backward reaches them).
        block_saved_bytes: the part saved inside each repeated block.
        block_largest_bytes: the largest tensor saved inside each repeated block.
        block_input_bytes: each repeated block's input.
    """

    saved_bytes: int
    largest_bytes: int
    outside_largest_bytes: int
    leading_bytes: int
    block_saved_bytes: tuple[int, ...]
    block_largest_bytes: tuple[int, ...]
    block_input_bytes: tuple[int, ...]

    def peak_bytes(self, checkpoint_every: int | None = None) -> int:
        """Activation memory at its peak. Without activation checkpointing that is the start
        of backward: every saved tensor, and the gradient of the largest one alive with its
        input's. With it on every ``checkpoint_every``-th block, those blocks keep only
        their input; the peak is the end of forward (the kept tensors and the temporaries
        of the largest one outside the blocks) or the recomputation of the largest block
        in backward (its tensors and temporaries on top of what is kept), whichever is
        larger."""
        if not checkpoint_every or not self.block_saved_bytes:
            return self.saved_bytes + 2 * self.largest_bytes
        checkpointed = range(0, len(self.block_saved_bytes), checkpoint_every)
        in_blocks = sum(self.block_inputs_kept(checkpointed))
        kept = self.saved_bytes - sum(self.block_saved_bytes) + in_blocks
        end_of_forward = kept + 2 * self.outside_largest_bytes
        recompute = (
            self.leading_bytes
            + in_blocks
            + max(self.block_saved_bytes[i] + self.block_largest_bytes[i] for i in checkpointed)
        )
        return max(end_of_forward, recompute)

    def scaled(self, fraction: float) -> ActivationFootprint:
        """The same activations for a batch ``fraction`` as large (they grow with it)."""

        def scale(value: int) -> int:
            return math.ceil(value * fraction)

        return ActivationFootprint(
            saved_bytes=scale(self.saved_bytes),
            largest_bytes=scale(self.largest_bytes),
            outside_largest_bytes=scale(self.outside_largest_bytes),
            leading_bytes=scale(self.leading_bytes),
            block_saved_bytes=tuple(map(scale, self.block_saved_bytes)),
            block_largest_bytes=tuple(map(scale, self.block_largest_bytes)),
            block_input_bytes=tuple(map(scale, self.block_input_bytes)),
        )

    def block_inputs_kept(self, checkpointed: range) -> list[int]:
        """What each block keeps for backward: its input when checkpointed, else every
        tensor it saved."""
        return [
            self.block_input_bytes[i] if i in checkpointed else self.block_saved_bytes[i]
            for i in range(len(self.block_saved_bytes))
        ]


@dataclass(frozen=True)
class TensorParallelFootprint:
    """What tensor parallelism splits of a model, from its plan (configured, declared or
    found by shape; see :mod:`lightning_accel.strategies.tensor_parallel`).

    Args:
        split_elements: trainable parameter elements the plan divides between the ranks
            (column-wise weights and biases, row-wise weights).
        sizes: the sizes up to :data:`TENSOR_PARALLEL_SIZES`' largest that divide every
            split width and head count.
        regions: column-wise-to-row-wise regions per forward pass; each moves the
            hidden state (a block's input) twice each way between the ranks.
        sequence_parallel: norms run on sequence slices (activations between the regions
            split too; two collectives each way per region instead of one all-reduce).
        styles: the plan, as (module path with block numbers written ``*``, style) pairs.
    """

    split_elements: int
    sizes: tuple[int, ...]
    regions: int
    sequence_parallel: bool
    styles: tuple[tuple[str, str], ...] = ()


TENSOR_PARALLEL_SIZES = (2, 4, 8, 16)


@dataclass(frozen=True)
class ModelFootprint:
    """What a model's training step needs, independent of how it is laid out on devices.

    Args:
        parameter_shapes: the shape of each trainable parameter (tied ones once).
        parameter_itemsize: bytes per element of the parameters as built.
        frozen_bytes: parameters that do not train, and buffers.
        optimizer_state_per_parameter_byte: optimizer state bytes per parameter byte (2 for
            Adam's two moments, 1 for momentum SGD), from one step of the module's optimizer.
        unit_parameter_bytes: trainable parameters of each repeated block (FSDP2's units).
        forward_flops: FLOPs of one forward pass over the batch.
        activations: by precision, what the forward pass saves for backward.
        samples: samples in the measured batch.
        tensor_parallel: what tensor parallelism would split (None: no plan fits the
            model).
    """

    parameter_shapes: tuple[tuple[int, ...], ...]
    parameter_itemsize: int
    frozen_bytes: int
    optimizer_state_per_parameter_byte: float
    unit_parameter_bytes: tuple[int, ...]
    forward_flops: int
    activations: dict[str, ActivationFootprint]
    samples: int
    tensor_parallel: TensorParallelFootprint | None = None

    @property
    def parameters(self) -> int:
        """Trainable parameters."""
        return sum(math.prod(shape) for shape in self.parameter_shapes)

    def parameter_bytes(self, itemsize: int | None = None) -> int:
        """Bytes of the trainable parameters (at ``itemsize`` bytes each, if given)."""
        return self.parameters * (itemsize or self.parameter_itemsize)

    def sharded_parameter_bytes(self, world: int, itemsize: int | None = None) -> int:
        """Bytes of the largest shard FSDP2 gives a rank: each parameter split on its
        first dimension into ``world`` chunks of ``ceil(rows / world)`` rows."""
        size = itemsize or self.parameter_itemsize
        total = 0
        for shape in self.parameter_shapes:
            rows = shape[0] if shape else 1
            total += math.ceil(rows / world) * math.prod(shape[1:]) * size
        return total

    def with_samples(self, samples: int) -> ModelFootprint:
        """The footprint of the same step on ``samples`` samples per rank."""
        fraction = samples / self.samples
        activations = {k: v.scaled(fraction) for k, v in self.activations.items()}
        flops = round(self.forward_flops * fraction)
        return replace(self, activations=activations, forward_flops=flops, samples=samples)

    def root_parameter_bytes(self) -> int:
        """Trainable parameter bytes outside the repeated blocks (embeddings, heads, ...)."""
        return self.parameter_bytes() - sum(self.unit_parameter_bytes)


def _training_loss(output: Any) -> torch.Tensor:
    return output["loss"] if isinstance(output, dict) else output


@contextmanager
def _no_logging(module: pl.LightningModule) -> Iterator[None]:
    # self.log needs a running loop; the measured step has none
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log, module.log_dict


def _autocast(precision: str) -> AbstractContextManager:
    dtype = _AUTOCAST.get(precision)
    return torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()


class _SavedTensors:
    """Counts the storages a forward pass saves for backward, attributing each to the
    repeated block that saved it first."""

    def __init__(self, parameters: Sequence[torch.Tensor], blocks: Sequence[nn.Module]) -> None:
        self.ignored = {p.untyped_storage()._cdata for p in parameters}
        self.sizes: dict[int, int] = {}
        self.outside_largest = 0
        self.leading = 0
        self.blocks_done = 0
        self.block_largest = [0] * len(blocks)
        self.block_saved = [0] * len(blocks)
        self.block_input = [0] * len(blocks)
        self.current: int | None = None
        self.blocks = blocks

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.ignored and key not in self.sizes:
            size = self.sizes[key] = storage.nbytes()
            if self.current is None:
                self.outside_largest = max(self.outside_largest, size)
                self.leading += size if not self.blocks_done else 0
            else:
                self.block_saved[self.current] += size
                self.block_largest[self.current] = max(self.block_largest[self.current], size)
        return tensor

    def hooks(self) -> list[Any]:
        handles = []
        for index, block in enumerate(self.blocks):

            def enter(module: nn.Module, args: Any, index: int = index) -> None:
                self.current = index
                self.block_input[index] = sum(
                    a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor)
                )

            def leave(module: nn.Module, args: Any, output: Any) -> None:
                self.current = None
                self.blocks_done += 1

            handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]
        return handles

    def footprint(self) -> ActivationFootprint:
        return ActivationFootprint(
            saved_bytes=sum(self.sizes.values()),
            largest_bytes=max(self.sizes.values(), default=0),
            outside_largest_bytes=self.outside_largest,
            leading_bytes=self.leading,
            block_saved_bytes=tuple(self.block_saved),
            block_largest_bytes=tuple(self.block_largest),
            block_input_bytes=tuple(self.block_input),
        )


def _measure_activations(
    step: Callable[[], Any], parameters: Sequence[torch.Tensor], blocks: Sequence[nn.Module]
) -> ActivationFootprint:
    saved = _SavedTensors(parameters, blocks)
    handles = saved.hooks()
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            step()
    finally:
        for handle in handles:
            handle.remove()
    return saved.footprint()


def _optimizer_state_ratio(module: pl.LightningModule, parameters: list[nn.Parameter]) -> float:
    """Optimizer state bytes per parameter byte, after one step of the module's own first
    optimizer (0 when it configures none)."""
    configured = module.configure_optimizers()
    optimizer = configured
    while not isinstance(optimizer, torch.optim.Optimizer):
        if isinstance(optimizer, dict):
            optimizer = optimizer["optimizer"]
        elif isinstance(optimizer, (list, tuple)) and optimizer:
            optimizer = optimizer[0]
        else:
            return 0.0
    for parameter in parameters:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    state = sum(
        value.untyped_storage().nbytes()
        for entry in optimizer.state.values()
        for value in entry.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    )
    for parameter in parameters:
        parameter.grad = None
    parameter_bytes = sum(p.numel() * p.element_size() for p in parameters)
    return state / parameter_bytes if parameter_bytes else 0.0


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(batch) if isinstance(t, torch.Tensor)]
    return int(leaves[0].shape[0]) if leaves and leaves[0].dim() else 1


def _block_pattern(path: str, blocks: Sequence[str]) -> str:
    """``path`` with the repeated block it lies in written ``*`` (``blocks.3.attn.qkv`` ->
    ``blocks.*.attn.qkv``)."""
    for block in blocks:
        if path.startswith(f"{block}."):
            parent = block.rpartition(".")[0]
            pattern = f"{parent}.*" if parent else "*"
            return pattern + path.removeprefix(block)
    return path


def tensor_parallel_footprint(
    module: nn.Module, configured: Mapping[str, str] | None = None
) -> TensorParallelFootprint | None:
    """What tensor parallelism would split of ``module`` under the ``configured`` plan
    (globs), or the one the model declares or that is found by shape; None when no plan is
    configured and none fits the model.

    Raises:
        ConfigError: a configured plan that does not fit the model.
    """
    from lightning_accel.strategies.tensor_parallel import (
        dividing_sizes,
        resolve_plan,
        split_parameters,
    )

    try:
        plan = resolve_plan(module, configured)
    except ConfigError:
        if configured:
            raise
        return None
    split = {id(p): p for p in split_parameters(module, plan) if p.requires_grad}
    return TensorParallelFootprint(
        split_elements=sum(p.numel() for p in split.values()),
        sizes=dividing_sizes(module, plan, TENSOR_PARALLEL_SIZES),
        regions=sum(1 for style in plan.styles.values() if style == "rowwise"),
        sequence_parallel=plan.sequence_parallel,
        styles=tuple(
            dict.fromkeys(
                (_block_pattern(path, plan.blocks), style) for path, style in plan.styles.items()
            )
        ),
    )


def _initialize_lazy_modules(module: pl.LightningModule, batch: Any, through_forward: bool) -> None:
    """Give ``module``'s ``Lazy*`` modules (built on the meta device) their shapes, as the
    run's first step does: one step on ``batch`` as meta tensors, recording nothing."""
    batch = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, batch)
    with torch.no_grad(), _no_logging(module):
        _step(module, batch, through_forward)


def _step(module: pl.LightningModule, batch: Any, through_forward: bool) -> Any:
    """One training step's loss (or, ``through_forward``, the forward's output) on ``batch``."""
    if through_forward:
        return module(*(batch if isinstance(batch, tuple) else (batch,)))
    return _training_loss(module.training_step(batch, 0))


def measure_footprint(
    module: pl.LightningModule,
    batch: Any,
    precisions: Sequence[str] = ("32-true",),
    through_forward: bool = False,
    count_flops: bool = True,
    tensor_parallel_plan: Mapping[str, str] | None = None,
) -> ModelFootprint:
    """Measure ``module`` (built on the meta device; its tensors become fake, in place) on
    ``batch`` (meta or real tensors, only their shapes are used).

    Args:
        module: the LightningModule, attached to a Trainer if its ``configure_optimizers``
            reads one.
        batch: one training batch, or the ``forward`` input with ``through_forward``.
        precisions: Lightning precision names to measure activations in.
        through_forward: run ``module(batch)`` instead of ``training_step`` (for a module
            described by its ``example_input_array``).
        count_flops: count the forward pass's FLOPs (one more pass; 0 when not counted).
        tensor_parallel_plan: the run's configured tensor parallel plan, if any.
    """
    if any(is_lazy(p) for p in module.parameters()):
        _initialize_lazy_modules(module, batch, through_forward)
    tensor_parallel = tensor_parallel_footprint(module, tensor_parallel_plan)
    mode = fake_mode()
    fake_module(module, mode)
    batch = fake_batch(batch, mode)

    def step() -> Any:
        return _step(module, batch, through_forward)

    trainable = list({id(p): p for p in module.parameters() if p.requires_grad}.values())
    blocks = find_repeated_blocks(module)
    block_ids = [{id(p) for p in block.parameters() if p.requires_grad} for block in blocks]

    activations = {}
    module.train()
    with mode, _no_logging(module):
        for precision in dict.fromkeys(precisions):
            with _autocast(precision):
                activations[precision] = _measure_activations(step, trainable, blocks)
        forward_flops = 0
        if count_flops:
            with flop_counter() as counter:
                step()
            forward_flops = int(counter.get_total_flops())
        ratio = _optimizer_state_ratio(module, trainable)
    trainable_ids = {id(p) for p in trainable}
    others = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    frozen = sum(t.numel() * t.element_size() for k, t in others.items() if k not in trainable_ids)
    return ModelFootprint(
        parameter_shapes=tuple(tuple(p.shape) for p in trainable),
        parameter_itemsize=trainable[0].element_size() if trainable else 4,
        frozen_bytes=frozen,
        optimizer_state_per_parameter_byte=ratio,
        unit_parameter_bytes=tuple(
            sum(p.numel() * p.element_size() for p in trainable if id(p) in ids)
            for ids in block_ids
        ),
        forward_flops=forward_flops,
        activations=activations,
        samples=batch_samples(batch),
        tensor_parallel=tensor_parallel,
    )
