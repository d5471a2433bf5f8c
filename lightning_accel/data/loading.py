"""DataLoaders that resume exactly mid-epoch and tune themselves to the hardware."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import XLAAccelerator
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from lightning_accel.config import require_positive
from lightning_accel.data.worker_start import LoaderWorkerStart
from lightning_accel.errors import ConfigError
from lightning_accel.machine import usable_cores

SAMPLING_CHOICES = ("shuffled", "sequential", "random")
Sampling = Literal["shuffled", "sequential", "random"]


def check_sampling(sampling: str) -> None:
    """Raise a :class:`ConfigError` unless ``sampling`` is one of :data:`SAMPLING_CHOICES`."""
    if sampling not in SAMPLING_CHOICES:
        raise ConfigError("data.sampling", sampling, "is not a sampling", SAMPLING_CHOICES)


class ResumableSampler(DistributedSampler):
    """This rank's share of a dataset, epoch by epoch, that can start part-way through an
    epoch. In one process it is a single replica, so N ranks with batch b see exactly the
    samples that one process sees with batch N*b.

    Args:
        dataset: the map-style dataset sampled.
        sampling: ``shuffled`` (each index once per epoch, in an order seeded by seed and
            epoch), ``sequential`` (in order), or ``random`` (``samples_per_epoch`` indices
            drawn with replacement, seeded by seed and epoch).
        samples_per_epoch: samples in one epoch under ``random``; default the dataset's size.
        num_replicas, rank: the data-parallel world and this rank.
        seed: seed of the order.
    """

    def __init__(
        self,
        dataset: Sized,
        sampling: Sampling = "shuffled",
        samples_per_epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        check_sampling(sampling)
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=sampling == "shuffled",
            seed=seed,
            drop_last=True,
        )
        self.sampling = sampling
        if sampling == "random":
            per_epoch = samples_per_epoch or len(dataset)
            self.num_samples = per_epoch // num_replicas
            self.total_size = self.num_samples * num_replicas
        self.start = 0  # samples of this rank's epoch to skip, set when resuming

    @override
    def __iter__(self) -> Iterator[int]:
        if self.sampling == "random":
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            drawn = torch.randint(len(self.dataset), (self.total_size,), generator=generator)  # type: ignore[arg-type]
            indices = drawn[self.rank : self.total_size : self.num_replicas].tolist()
        else:
            indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class HeldOutShard(DistributedSampler):
    """This rank's share of a held-out split, for validation, test and predict: samples
    ``rank``, ``rank + num_replicas``, ... in order, so that N ranks with batch b read the
    samples one process reads with batch N*b, under a limit of batches too. Every sample is
    read once over all ranks (a ``DistributedSampler`` leaves out or repeats up to a rank's
    worth, so two ranks' metrics differed from one process's), and every rank reads the same
    number of batches, since FSDP2 and tensor parallelism gather parameters in each batch's
    forward. Only where the ranks with one sample more would read it as a batch of its own
    (their share otherwise a whole number of batches) are the last samples, fewer than the
    ranks, left out.

    Args:
        dataset: the held-out split.
        batch_size: samples per batch (per rank).
        num_replicas, rank: the data-parallel world and this rank.
    """

    def __init__(
        self, dataset: Sized, batch_size: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
        )
        deal_held_out(self, batch_size)


class LeadingPositions(Dataset):
    """The first ``size`` entries of the sampler-as-dataset view that Lightning's unrepeated
    predict sampler deals out (``reset`` passed on), so that it deals those only."""

    def __init__(self, order: Any, size: int) -> None:
        self.order, self.size = order, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, position: int) -> Any:
        return self.order[position]

    def reset(self) -> None:
        self.order.reset()


def deal_held_out(sampler: DistributedSampler, batch_size: int) -> None:
    """Make an unshuffled ``DistributedSampler`` of a held-out split (Lightning's, or a
    ``DistributedSampler`` of one's own) read it as :class:`HeldOutShard` does: every sample
    once, dealt out in order, the same number of batches of ``batch_size`` on every rank.
    Lightning's samplers for validation and test repeat samples to fill the last round, and
    its predict sampler may give some ranks a batch more, which FSDP2 and tensor parallelism
    wait on for ever. Changed in place: the loader holding it is not built again."""
    whole = len(sampler.dataset)  # type: ignore[arg-type]
    each, rest = divmod(whole, sampler.num_replicas)
    size = whole - (rest if rest and each % batch_size == 0 else 0)
    if isinstance(sampler, UnrepeatedDistributedSampler):
        # it deals out every position of its dataset: give it a view of the first `size`
        if size < whole:
            sampler.dataset = LeadingPositions(sampler.dataset, size)
    else:
        sampler.drop_last = True  # no repeats: the first `total_size` positions, dealt out
    sampler.total_size = size
    sampler.num_samples = len(range(sampler.rank, size, sampler.num_replicas))


@runtime_checkable
class CountsBatches(Protocol):
    """A loader that counts the batches its consumer took and the time the consumer waited
    for them (the speed monitor reports that wait)."""

    batches_taken: int
    wait_seconds: float


@runtime_checkable
class HasBatchSize(Protocol):
    """A DataModule that states its batch size per process (checked against the memory and
    the devices a batch is split over before a run starts)."""

    batch_size: int


def counted(batches: Iterator[Any], counter: CountsBatches) -> Iterator[Any]:
    """Yield ``batches``, adding one to ``counter.batches_taken`` for each and the time the
    consumer waited for it to ``counter.wait_seconds``."""
    while True:
        asked = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        counter.wait_seconds += time.perf_counter() - asked
        counter.batches_taken += 1
        yield batch


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position inside the epoch goes into Lightning's checkpoints.

    Lightning saves ``state_dict()`` of a training DataLoader that has one and hands it back
    through ``load_state_dict()`` when ``fit(ckpt_path=...)`` resumes; the next epoch
    iteration then skips the batches already trained on, so a resumed run sees exactly the
    batches an uninterrupted run sees. It needs a :class:`ResumableSampler`. It also
    adds up the time its consumer waited for batches (``wait_seconds``).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, drop_last=True, **kwargs)
        self.batches_taken = 0
        self.epoch_start = 0  # batches the current pass skipped (trained before a resume)
        self.wait_seconds = 0.0  # time the training loop spent waiting for batches
        self._resume_at = 0
        self._resume_epoch = 0

    @override
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        assert isinstance(self.sampler, ResumableSampler) and self.batch_size is not None
        # runs at the first batch, after Lightning has set the epoch: a resumed epoch skips
        # what was trained; a new one (the saved epoch ended early, by
        # `limit_train_batches`) starts whole
        skip = self._resume_at if self.sampler.epoch == self._resume_epoch else 0
        self._resume_at = 0
        # the workers' base seed, drawn as the iterator starts, from a generator of the
        # epoch's own: not from the global one, whose state a resumed run restores at its
        # first batch (an epoch's iterator starts after it in one run, before in the other)
        self.generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)
        self.sampler.start = skip * self.batch_size
        self.epoch_start = skip
        self.batches_taken = skip
        yield from counted(super().__iter__(), self)

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """The epoch and the batches of it trained on. ``consumed``: the batches of this
        epoch's pass the trainer took, when a device loader reads ahead of it (default:
        every batch handed out)."""
        assert isinstance(self.sampler, ResumableSampler)
        taken = self.batches_taken if consumed is None else self.epoch_start + consumed
        return {"epoch": self.sampler.epoch, "batches_taken": taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        assert isinstance(self.sampler, ResumableSampler)
        if state["batches_taken"] >= len(self):  # saved at an epoch's end: the next starts
            self.sampler.set_epoch(state["epoch"] + 1)
            return
        self.sampler.set_epoch(state["epoch"])
        self._resume_epoch = state["epoch"]
        self._resume_at = state["batches_taken"]


@dataclass(frozen=True)
class LoaderPlan:
    """The DataLoader settings ``auto`` stands for on a node (see :func:`plan_loader`).

    Args:
        workers: loader worker processes per rank for data read as it is stored.
        decoding_workers: worker processes per rank for data that must be decoded.
        pin_memory: whether batches are staged in pinned memory (copies to a CUDA device).
    """

    workers: int
    decoding_workers: int
    pin_memory: bool

    def workers_for(self, decodes: bool) -> int:
        """Worker processes per rank for data that does (or does not) need decoding."""
        return self.decoding_workers if decodes else self.workers


def plan_loader(accelerator: str, local_processes: int, cores: int) -> LoaderPlan:
    """What ``auto`` loader settings mean for ``local_processes`` ranks of ``accelerator``
    sharing a node's ``cores``.

    On accelerators (CUDA, XLA) the ranks share the cores, one each left to the training
    process, at most 8 workers; on CPUs the cores compute the model, so workers are only
    worth it for data that must be decoded (half of a rank's cores) and none otherwise.
    Pinned memory only when copying to a CUDA device.
    """
    per_rank = max(1, cores // max(1, local_processes))
    if "cpu" in accelerator:
        return LoaderPlan(workers=0, decoding_workers=per_rank // 2, pin_memory=False)
    workers = min(8, per_rank - 1)
    return LoaderPlan(workers=workers, decoding_workers=workers, pin_memory="cuda" in accelerator)


# more loader worker processes per core only add start-up time and memory
WORKERS_PER_CORE = 4


def loader_options(
    trainer: pl.Trainer | None,
    num_workers: int | str = "auto",
    pin_memory: bool | str = "auto",
    persistent_workers: bool | str = "auto",
    prefetch_factor: int | None = None,
    decodes: bool = False,
) -> dict[str, Any]:
    """DataLoader keyword arguments for the hardware the trainer runs on: ``auto`` values
    as :func:`plan_loader` decides them for this node (``decodes``: the data must be
    decoded); workers persist across epochs whenever there are any. Explicit values win.
    """
    accelerator = type(trainer.accelerator).__name__.lower() if trainer is not None else "cpu"
    local_ranks = getattr(trainer, "num_devices", 1) if trainer is not None else 1
    plan = plan_loader(accelerator, local_ranks, usable_cores())
    if num_workers == "auto":
        num_workers = plan.workers_for(decodes)
    elif not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError("data.num_workers", num_workers, "must be a count of 0 or more", ["auto"])
    elif num_workers > (most := WORKERS_PER_CORE * usable_cores()):
        raise ConfigError(
            "data.num_workers",
            num_workers,
            f"is more than the {most} loader processes ({WORKERS_PER_CORE} per core) this "
            "machine can run beside the model, each holding its own state; give at most "
            f"{most}, or auto",
        )
    if pin_memory == "auto":
        pin_memory = plan.pin_memory
    if persistent_workers == "auto":
        persistent_workers = num_workers > 0
    options: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": bool(pin_memory),
        "persistent_workers": bool(persistent_workers) and num_workers > 0,
    }
    if num_workers > 0:
        options["worker_init_fn"] = LoaderWorkerStart(os.getpid())
    if num_workers > 0 and prefetch_factor is not None:
        options["prefetch_factor"] = prefetch_factor
    return options


def checked_loader_settings(
    num_workers: int | str = "auto",
    pin_memory: bool | str = "auto",
    persistent_workers: bool | str = "auto",
    prefetch_factor: int | None = None,
) -> dict[str, Any]:
    """A DataModule's loader settings as given (``auto`` resolved later, per hardware, by
    :func:`loader_options`), checked now so that bad values stop a run before it starts."""
    settings = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": persistent_workers,
        "prefetch_factor": prefetch_factor,
    }
    loader_options(None, **settings)
    return settings


def data_parallel_share(trainer: pl.Trainer | None) -> dict[str, int]:
    """``num_replicas`` and ``rank`` of this process's data shard (one replica alone)."""
    strategy = trainer.strategy if trainer is not None else None
    return getattr(strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}


def needs_equal_batches(trainer: pl.Trainer | None) -> bool:
    """Whether every batch must have the same shape: on XLA a new shape compiles a new graph
    and an SPMD mesh splits each batch evenly over its devices."""
    return trainer is not None and isinstance(trainer.accelerator, XLAAccelerator)


class SplitDataModule(pl.LightningDataModule):
    """Base of the DataModules: a training split read by a :class:`ResumableDataLoader`
    (exact mid-epoch resume) and a held-out split read in order for validation, test and
    predict, each rank taking its share.

    Subclasses set ``train_set`` and ``val_set`` in ``setup``; ``sampling`` and
    ``samples_per_epoch`` (see :class:`ResumableSampler`) and ``decodes`` (the loader's
    workers decode files, see :func:`loader_options`) may be set to change the defaults.

    Args:
        batch_size: samples per batch (per process).
        num_workers, pin_memory, persistent_workers, prefetch_factor: DataLoader settings;
            ``auto`` picks them for the hardware (see :func:`loader_options`).
        seed: seed of the training order.
    """

    sampling: Sampling = "shuffled"
    samples_per_epoch: int | None = None
    decodes = False

    def __init__(
        self,
        batch_size: int,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool | str = "auto",
        prefetch_factor: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require_positive("data.batch_size", batch_size)
        self.batch_size = batch_size
        self.loader_settings = checked_loader_settings(
            num_workers, pin_memory, persistent_workers, prefetch_factor
        )
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _options(self) -> dict[str, Any]:
        return loader_options(self.trainer, **self.loader_settings, decodes=self.decodes)

    @override
    def train_dataloader(self) -> ResumableDataLoader:
        assert self.train_set is not None, "setup() must run first"
        sampler = ResumableSampler(
            self.train_set,
            self.sampling,
            samples_per_epoch=self.samples_per_epoch,
            seed=self.seed,
            **data_parallel_share(self.trainer),
        )
        return ResumableDataLoader(
            self.train_set, sampler, batch_size=self.batch_size, **self._options()
        )

    @override
    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() must run first"
        sampler = HeldOutShard(self.val_set, self.batch_size, **data_parallel_share(self.trainer))
        # every held-out sample counts, unless the hardware needs whole batches (a split
        # smaller than one batch is still read, as one short batch)
        drop_last = needs_equal_batches(self.trainer) and len(sampler) >= self.batch_size
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            # its iterators draw their workers' seed from here, not from the global
            # generator, which training's random state continues in (ExactResume)
            generator=torch.Generator().manual_seed(self.seed),
            **self._options(),
        )

    @override
    def test_dataloader(self) -> DataLoader:
        """The held-out split (the one validation uses)."""
        return self.val_dataloader()

    @override
    def predict_dataloader(self) -> DataLoader:
        """The held-out split, in order."""
        return self.val_dataloader()
