"""A SIGTERM that reaches any rank stops every rank at the same training step, without the
host-device sync Lightning makes every step to learn of one."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from types import FrameType

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

log = logging.getLogger(__name__)
# torch.distributed's own default for a gloo group
DEFAULT_TIMEOUT_S = 1800.0


class AgreedStop:
    """Every rank's SIGTERM flag, combined on a CPU (gloo) group one step behind, in place of
    Lightning's broadcasts.

    Lightning (2.6) broadcasts rank 0's flag from the device at the start of every training
    step and reads it with ``.item()``: on GPUs a host-device sync per step. Its signal
    handler broadcasts too, wherever the signal lands on that rank, so a SIGTERM that reaches
    one rank makes a collective the others do not (a crash, or a peer left waiting). Here the
    handler only records the signal. Each step starts an asynchronous MAX all-reduce of the
    flag on a gloo group and reads the one started the step before, which has long finished:
    every rank reads the same value at the same step and, when any rank was signalled,
    raises Lightning's :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException` there
    (one step after the signal).

    Args:
        trainer: the trainer whose fit loop is checked; installed after Lightning registered
            its signal handlers (the strategy's ``on_train_start``).
        timeout_s: how long the all-reduce may wait for a peer.
    """

    def __init__(self, trainer: pl.Trainer, timeout_s: float) -> None:
        self._trainer = trainer
        self._group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self._signalled = False
        self._pending: tuple[dist.Work, torch.Tensor] | None = None
        # Lightning's handler is replaced (it restores the earlier one at teardown), and
        # the override: its per-step broadcast of rank 0's flag becomes this check
        self._earlier_handler = trainer._signal_connector._original_handlers.get(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():  # as Lightning registers
            signal.signal(signal.SIGTERM, self._on_sigterm)
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = self.check  # type: ignore[method-assign]

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        log.info("rank %d received SIGTERM", self._trainer.global_rank)
        if not self._signalled and self._trainer.strategy.launcher is not None:
            self._trainer.strategy.launcher.kill(signum)  # a script launcher's child ranks
        self._signalled = True
        if callable(self._earlier_handler):
            self._earlier_handler(signum, frame)

    def check(self) -> None:
        """Stop here when the flags combined a step ago say a rank was signalled; start
        combining this step's."""
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            if flag.item():
                self._pending = None
                self._trainer._signal_connector.received_sigterm = True
                raise SIGTERMException
        flag = torch.tensor([int(self._signalled)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)  # type: ignore[assignment]

    def close(self) -> None:
        """Finish the last all-reduce (every rank that trained to the end started it; a
        failed run's peers may be gone, so it is left) and free the group."""
        if self._pending is not None:
            if self._trainer.state.status == TrainerStatus.INTERRUPTED:
                return  # left to the process's exit
            self._pending[0].wait()
            self._pending = None
        dist.destroy_process_group(self._group)


class AgreedStopMixin:
    """Strategy mixin: installs :class:`AgreedStop` when a fit starts with several ranks and
    removes it at teardown. Put it first among the bases of a Lightning strategy that
    sets ``_timeout``."""

    _agreed_stop: AgreedStop | None = None

    @override
    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            timeout: timedelta | None = self._timeout  # type: ignore[attr-defined]
            seconds = timeout.total_seconds() if timeout is not None else DEFAULT_TIMEOUT_S
            self._agreed_stop = AgreedStop(trainer, seconds)

    @override
    def teardown(self) -> None:
        if self._agreed_stop is not None:
            self._agreed_stop.close()
            self._agreed_stop = None
        super().teardown()  # type: ignore[misc]


def stopped_together(trainer: pl.Trainer, exception: BaseException) -> bool:
    """Whether ``exception`` ended ``trainer``'s fit as a SIGTERM stop that every rank made at
    the same step: one process, or a strategy with :class:`AgreedStopMixin`. Nothing failed
    then, and saving (a collective) is safe."""
    return isinstance(exception, SIGTERMException) and (
        trainer.world_size == 1 or isinstance(trainer.strategy, AgreedStopMixin)
    )
