"""FSDP2 (``fully_shard``) that shards the model by itself, configured by name."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torchmetrics import Metric
from typing_extensions import override

from lightning_accel.checkpoints import (
    atomic_directory,
    local_bytes,
    sharded_entries,
    verify_checkpoint,
)
from lightning_accel.config import OptimizationConfig, require_positive
from lightning_accel.files import check_room
from lightning_accel.optimize.transforms import (
    FSDP2,
    TENSOR_PARALLEL,
    apply_model_optimizations,
)
from lightning_accel.strategies.agreed_stop import AgreedStopMixin
from lightning_accel.strategies.async_save import AsyncShardWriter
from lightning_accel.strategies.group_exit import GroupClosedAtExit
from lightning_accel.strategies.held_out import HeldOutDealing
from lightning_accel.strategies.mesh import MeshShape, check_mesh_sizes, resolve_mesh
from lightning_accel.strategies.rank_zero_buffers import RankZeroBuffers
from lightning_accel.strategies.sharding import shard_model
from lightning_accel.strategies.tensor_parallel import (
    apply_tensor_parallel,
    check_divisible,
    resolve_plan,
)
from lightning_accel.strategies.whole_checkpoint import load_whole_checkpoint


class FSDP2Strategy(
    RankZeroBuffers, HeldOutDealing, AgreedStopMixin, GroupClosedAtExit, ModelParallelStrategy
):
    """Fully sharded data parallel on ``torch.distributed.fsdp.fully_shard``, with tensor
    parallelism (2D) or replica groups (HSDP) on one device mesh, on CUDA (NCCL) and CPU
    (gloo), without any ``configure_model`` code in the LightningModule.

    Every process holds a 1/N shard of each parameter, gradient and optimizer state. The
    model is sharded unit by unit (named classes, or the repeated blocks found in it), then
    at the root. With ``tensor_parallel`` > 1 each layer is first split over a tensor
    parallel group (the plan the model declares, one given here, or one found by shape;
    see :mod:`~lightning_accel.strategies.tensor_parallel`), then FSDP2 shards over the data
    parallel ranks, if there are several. Activation checkpointing and compile from the
    optimization profile are applied in ``setup`` before the split and the sharding, by
    the one ordered transform function. A LightningModule that already calls
    ``fully_shard`` in ``configure_model`` is left as it is. Checkpoints are sharded
    (torch.distributed.checkpoint) and resume at any world size.

    Registered as ``"fsdp2"``: ``Trainer(strategy="fsdp2")`` after ``import lightning_accel``.

    Args:
        shard_classes: class names of the modules to shard (e.g. ``["TransformerBlock"]``);
            empty: detect the repeated blocks.
        reshard_after_forward: free gathered parameters after forward (less memory, one
            more all-gather in backward).
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory.
        timeout_s: how long a collective may wait for a peer before the rank fails.
        data_parallel_replicate, data_parallel_shard, tensor_parallel: the mesh's sizes, whose
            product is the world size; one may be -1, meaning what the others leave.
            Replicas > 1 is HSDP: each replica group holds a whole sharded copy.
        tensor_parallel_plan: module path glob -> ``colwise`` | ``rowwise`` |
            ``sequence_parallel`` | ``replicate``; empty: the model's own or one by shape.
        save_distributed_checkpoint: save one shard per rank (``False``: one full file).
            Either way a checkpoint appears whole or not at all: shards are written into a
            staging directory that is renamed into place once every rank has finished.
        async_save: write sharded checkpoints in the background while training goes on
            (:class:`~lightning_accel.strategies.async_save.AsyncShardWriter`); each is
            renamed into place at the next save or when training ends.
        process_group_backend: ``nccl`` or ``gloo``; empty: Lightning's choice for the
            device (NCCL on CUDA, gloo on the CPU), and under ``cpu_offload`` on CUDA
            ``cuda:nccl,cpu:gloo``: the offloaded gradients are CPU tensors, whose norm
            gradient clipping reduces over the ranks, and NCCL takes GPU tensors only.
    """

    strategy_name = "fsdp2"

    def __init__(
        self,
        shard_classes: Sequence[str] = (),
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        timeout_s: float = 1800.0,
        data_parallel_replicate: int = 1,
        data_parallel_shard: int = -1,
        tensor_parallel: int = 1,
        tensor_parallel_plan: Mapping[str, str] | None = None,
        save_distributed_checkpoint: bool = True,
        async_save: bool = False,
        process_group_backend: str | None = None,
    ) -> None:
        require_positive("hardware.strategy_options.timeout_s", timeout_s)
        # the sizes are checked now; that they fill the world, once it is known
        self.mesh_sizes = (data_parallel_replicate, data_parallel_shard, tensor_parallel)
        check_mesh_sizes(*self.mesh_sizes)
        self.tensor_parallel_plan = dict(tensor_parallel_plan or {})
        self.mesh_shape = MeshShape()
        self.replica_mesh: DeviceMesh | None = None
        self.async_writer = AsyncShardWriter() if async_save else None
        self.save_blocked_seconds = 0.0  # training time spent in checkpoint saves
        self.saves = 0
        super().__init__(
            data_parallel_size=1,  # both sizes are set in setup_environment, from the world size
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timedelta(seconds=timeout_s),
        )
        self.shard_classes = list(shard_classes)
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        # the run's model transforms, handed over by ModelOptimizations: applied in setup,
        # in order, with the sharding last
        self.model_transforms: tuple[OptimizationConfig, Sequence[str] | None] | None = None

    # overrides Lightning's private method (pinned in tests/test_upstream_pins.py)
    @override
    def _get_process_group_backend(self) -> str:
        if self.process_group_backend is None and self.cpu_offload:
            if self.root_device.type == "cuda":
                return "cuda:nccl,cpu:gloo"
        return super()._get_process_group_backend()

    @override
    def setup_environment(self) -> None:
        # Lightning's defaults (data-parallel size = node count) would give every rank of a
        # node the same data; the sizes come from the mesh options instead.
        self.mesh_shape = resolve_mesh(self.num_nodes * self.num_processes, *self.mesh_sizes)
        self._data_parallel_size = self.mesh_shape.data_parallel
        self._tensor_parallel_size = self.mesh_shape.tensor
        super().setup_environment()  # Lightning's ("data_parallel", "tensor_parallel") mesh
        shape = self.mesh_shape
        if shape.replicate > 1:
            self.replica_mesh = init_device_mesh(
                self.root_device.type,
                (shape.replicate, shape.shard),
                mesh_dim_names=("data_parallel_replicate", "data_parallel_shard"),
            )

    @contextmanager
    @override
    def block_backward_sync(self) -> Iterator[None]:
        """Inner steps of gradient accumulation keep gradients local: one reduce-scatter per
        optimizer step instead of one per micro-batch."""
        if not isinstance(self.model, FSDPModule):
            yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        # Lightning's ModelParallelStrategy.setup (pinned in tests/test_upstream_pins.py)
        # without its demand for a configure_model hook: the model is parallelized here
        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        self._parallelize(self.model)
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if fitting and not self.cpu_offload:
            _optimizers_to_device(self.optimizers, self.root_device)

    @override
    def model_to_device(self) -> None:
        if not self.cpu_offload:
            super().model_to_device()
            return
        assert self.model is not None
        # offloaded shards stay in CPU memory; metric states follow the inputs' device
        for module in self.model.modules():
            if isinstance(module, Metric):
                module.to(self.root_device)

    def _parallelize(self, model: torch.nn.Module) -> None:
        """The run's model transforms, then the tensor parallel split and the sharding."""
        steps = {TENSOR_PARALLEL: self._split, FSDP2: self._shard}
        parallelize = {name: steps[name] for name in self.mesh_shape.parallel_steps}
        if self.model_transforms is None:
            for step in parallelize.values():
                step(model)
        else:
            optimization, names = self.model_transforms
            device_type = self.root_device.type
            apply_model_optimizations(model, optimization, device_type, names, parallelize)

    def _split(self, model: Any) -> None:
        plan = resolve_plan(model, self.tensor_parallel_plan)
        check_divisible(model, plan, self.mesh_shape.tensor)
        apply_tensor_parallel(model, self.device_mesh["tensor_parallel"], plan)

    def _shard(self, model: Any) -> None:
        shard_model(
            model,
            self.replica_mesh or self.device_mesh["data_parallel"],
            self.shard_classes,
            self.reshard_after_forward,
            str(self.precision_plugin.precision),
            self.cpu_offload,
        )

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """Refuse a checkpoint that would run code (its index, loop state or file) before
        torch's distributed checkpoint unpickles anything; load a whole file (one process's,
        DDP's) with :func:`load_whole_checkpoint`, which gives each parameter its own
        optimizer state where param groups reorder the parameters."""
        if "://" in str(checkpoint_path):
            return super().load_checkpoint(checkpoint_path, weights_only)
        verify_checkpoint(Path(checkpoint_path))
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():
            return super().load_checkpoint(path, weights_only)
        strict = self.lightning_module.strict_loading
        return load_whole_checkpoint(path, self.model, self.optimizers, strict)

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        if not self._save_distributed_checkpoint or storage_options is not None:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        target = Path(self.broadcast(filepath))
        # this node's ranks write shards of about one size, each replica's once (HSDP); a
        # shortfall is found before any rank writes, where a full disk midway left the
        # ranks' errors unreadable
        shards = local_bytes(checkpoint) * self.num_processes
        check_room(target, shards // self.mesh_shape.replicate)
        started = time.perf_counter()
        if self.async_writer is not None:
            shards = sharded_entries(checkpoint)
            self.async_writer.save(shards, checkpoint, target, self.global_rank == 0, self.barrier)
        else:
            with atomic_directory(target, self.global_rank == 0, self.barrier) as staging:
                super().save_checkpoint(checkpoint, staging)
        self.save_blocked_seconds += time.perf_counter() - started
        self.saves += 1

    def summary_figures(self) -> dict[str, Any]:
        """Training time spent saving checkpoints, for the run summary."""
        return {
            "checkpoint_async": self.async_writer is not None,
            "checkpoint_blocked_seconds": round(self.save_blocked_seconds, 3),
            "checkpoint_saves": self.saves,
        }

    @override
    def teardown(self) -> None:
        if self.async_writer is not None and torch.distributed.is_initialized():
            self.async_writer.finish(self.global_rank == 0, self.barrier)
        super().teardown()
