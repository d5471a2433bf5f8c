"""The XLA input pipeline: torch_xla's parallel device loader, with exact mid-epoch resume."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import torch
from typing_extensions import override

from lightning_accel.data.loading import counted
from lightning_accel.xla import runtime


def worker_context(dataset: Any) -> multiprocessing.context.BaseContext:
    """The fork server context for a loader's workers over ``dataset``, the server set to
    import torch and the dataset's module before it forks them (about 5 s of CPU per worker
    otherwise). Has no effect on a fork server this process already started."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", type(dataset).__module__])
    return context


class HostBatches:
    """The host DataLoader as the device loader's background thread reads it, keeping the
    error that ended a pass early.

    torch_xla's thread ends the device queue in a ``finally``, so a failed read (a worker
    that died, a dataset that raised) would otherwise end the epoch early without a word,
    and a run whose every pass fails would start epoch after empty epoch for ever. The
    error is kept here instead and raised again in the training thread by
    :class:`DeviceLoader`.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.error: Exception | None = None  # what ended the last pass early

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.loader
        except Exception as error:  # noqa: BLE001 - raised again in the training thread
            self.error = error


class DeviceLoader:
    """A DataLoader whose batches arrive on the XLA device through torch_xla's parallel
    device loader: a background thread copies batches ahead of the training step (split
    over the SPMD mesh when ``sharding`` is given, each device receiving only its piece).

    Because that thread reads ahead, the wrapped loader's own count of batches is too high
    for a checkpoint; this one counts the batches the trainer took and saves that count
    through the wrapped loader's ``state_dict(consumed=...)`` (a
    :class:`~lightning_accel.data.loading.ResumableDataLoader`), so a resumed run sees
    exactly the batches an uninterrupted one sees. Worker processes of the wrapped loader
    start from a fork server, never by forking the threaded training process; the server
    imports torch and the dataset's module once, so each worker does not. Other
    attributes (``sampler``, ``dataset``, ...) are the wrapped loader's, so Lightning treats
    it as that loader. An error that ends the background thread's reading is raised in the
    training thread once the batches read before it are used up (see :class:`HostBatches`).

    Args:
        loader: the host DataLoader.
        device: the XLA device the batches go to.
        sharding: how each batch tensor is split over the mesh (:func:`runtime.batch_sharding`),
            or ``None`` for one device.
    """

    def __init__(self, loader: Any, device: torch.device, sharding: Any = None) -> None:
        if getattr(loader, "num_workers", 0) > 0 and loader.multiprocessing_context is None:
            # The device loader iterates in a thread of its own while the XLA runtime runs
            # others: a worker forked from there can inherit a lock another thread held and
            # hang for ever (seen in torch.manual_seed). A fork server forks from a process
            # with one thread.
            loader.multiprocessing_context = worker_context(loader.dataset)
        self.loader = loader
        self._host_batches = HostBatches(loader)
        self._device_batches = runtime.device_loader(self._host_batches, device, sharding)
        self.batches_taken = 0  # batches of the current pass the trainer took
        self.wait_seconds = 0.0  # time the trainer waited for the device queue

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.batches_taken = 0
        self._host_batches.error = None
        return counted(self._raising_host_errors(iter(self._device_batches)), self)

    def _raising_host_errors(self, batches: Iterator[Any]) -> Iterator[Any]:
        yield from batches
        if self._host_batches.error is not None:
            raise self._host_batches.error

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def state_dict(self) -> dict[str, Any]:
        if not hasattr(self.loader, "state_dict"):
            return {}
        return self.loader.state_dict(consumed=self.batches_taken)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.loader.load_state_dict(state)


class DeviceLoading:
    """Strategy mixin for XLA: every DataLoader Lightning hands the strategy goes through a
    :class:`DeviceLoader`, split as :meth:`batch_sharding` says."""

    root_device: torch.device

    def batch_sharding(self) -> Any:
        """How batches are split over the devices (``None``: one device, whole batches)."""
        return None

    @override
    def process_dataloader(self, dataloader: Any) -> Any:
        if isinstance(dataloader, DeviceLoader):
            return dataloader
        return DeviceLoader(dataloader, self.root_device, self.batch_sharding())
