"""The device mesh of a sharded run: data-parallel replicas x data-parallel shards x tensor
parallel, sized from config and checked against the world size before anything starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_accel.errors import ConfigError
from lightning_accel.optimize.transforms import FSDP2, TENSOR_PARALLEL

OPTIONS_KEY = "hardware.strategy_options"
MESH_KEYS = ("data_parallel_replicate", "data_parallel_shard", "tensor_parallel")


@dataclass(frozen=True)
class MeshShape:
    """Sizes of a run's mesh dimensions; their product is the world size.

    Args:
        replicate: data-parallel replicas (HSDP's replica groups; 1 otherwise).
        shard: ranks each parameter is sharded over by FSDP2 within a replica.
        tensor: ranks each layer is split over by tensor parallelism.
    """

    replicate: int = 1
    shard: int = 1
    tensor: int = 1

    @property
    def data_parallel(self) -> int:
        """Ranks that see different data: replicas x shards."""
        return self.replicate * self.shard

    @property
    def layout(self) -> str:
        """The layout's name: ``fsdp2``, ``tp``, ``fsdp2_tp`` or ``hsdp``."""
        if self.replicate > 1:
            return "hsdp"
        if self.tensor > 1:
            return "fsdp2_tp" if self.shard > 1 else "tp"
        return "fsdp2"

    @property
    def parallel_steps(self) -> tuple[str, ...]:
        """The model transforms this mesh takes, in order: the tensor parallel split (over
        ``tensor`` > 1), then FSDP2 sharding (unless tensor parallel is the whole mesh)."""
        steps = (TENSOR_PARALLEL,) if self.tensor > 1 else ()
        return steps + (FSDP2,) if self.tensor == 1 or self.data_parallel > 1 else steps


def check_mesh_sizes(
    data_parallel_replicate: int = 1, data_parallel_shard: int = -1, tensor_parallel: int = 1
) -> dict[str, int]:
    """The mesh sizes by option name, once each is a positive count or -1 and at most one
    is -1 (what they must multiply to is known only with the world size).

    Raises:
        ConfigError: naming the first size that breaks this.
    """
    given = (data_parallel_replicate, data_parallel_shard, tensor_parallel)
    sizes = dict(zip(MESH_KEYS, given, strict=True))
    for key, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size == 0 or size < -1:
            raise ConfigError(f"{OPTIONS_KEY}.{key}", size, "must be a positive size or -1")
    open_keys = [key for key, size in sizes.items() if size == -1]
    if len(open_keys) > 1:
        raise ConfigError(
            f"{OPTIONS_KEY}.{open_keys[1]}",
            -1,
            f"is the second size of -1 (with {open_keys[0]}); only one size may be left open",
        )
    return sizes


def resolve_mesh(
    world_size: int,
    data_parallel_replicate: int = 1,
    data_parallel_shard: int = -1,
    tensor_parallel: int = 1,
) -> MeshShape:
    """The mesh for ``world_size`` ranks; one size may be -1, meaning what the others leave.

    Raises:
        ConfigError: a size that is not a positive count or -1, two sizes of -1, sizes whose
            product is not the world size, or replicas combined with tensor parallelism.
    """
    sizes = check_mesh_sizes(data_parallel_replicate, data_parallel_shard, tensor_parallel)
    open_keys = [key for key, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if open_keys:
        if world_size % fixed:
            raise ConfigError(
                f"{OPTIONS_KEY}.{open_keys[0]}",
                -1,
                f"cannot fill a world of {world_size} ranks: the other sizes multiply to "
                f"{fixed}, which does not divide it",
            )
        sizes[open_keys[0]] = world_size // fixed
    shape = MeshShape(*sizes.values())
    if shape.data_parallel * shape.tensor != world_size:
        shown = " x ".join(str(size) for size in sizes.values())
        raise ConfigError(
            OPTIONS_KEY,
            shown,
            f"(data_parallel_replicate x data_parallel_shard x tensor_parallel) multiplies "
            f"to {shape.data_parallel * shape.tensor}, not the world size {world_size}; "
            "set one of them to -1 to take what the others leave",
        )
    if shape.replicate > 1 and shape.tensor > 1:
        raise ConfigError(
            f"{OPTIONS_KEY}.tensor_parallel",
            shape.tensor,
            "cannot be combined with data_parallel_replicate > 1 (HSDP); use fsdp2_tp",
            [1],
        )
    return shape
