"""A SIGTERM that reaches any rank stops every rank at the same training step, without the
host-device sync Lightning makes every step to learn of one; SLURM's requeue signal saves
every rank at the same step too."""

from __future__ import annotations

import signal
from datetime import timedelta

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_accel.strategies.step_signals import StepSignals, requeue_signal

# torch.distributed's own default for a gloo group
DEFAULT_TIMEOUT_S = 1800.0


class AgreedStop:
    """Every rank's SIGTERM flag, combined on a CPU (gloo) group one step behind, in place of
    Lightning's broadcasts.

    Lightning (2.6) broadcasts rank 0's flag from the device at the start of every training
    step and reads it with ``.item()``: on GPUs a host-device sync per step. Its signal
    handler broadcasts too, wherever the signal lands on that rank, so a SIGTERM that reaches
    one rank makes a collective the others do not (a crash, or a peer left waiting). Here the
    handler only records the signal (:class:`StepSignals`). Each step starts an asynchronous
    MAX all-reduce of the flag on a gloo group and reads the one started the step before,
    which has long finished: every rank reads the same value at the same step and, when any
    rank was signalled, raises Lightning's
    :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException` there (one step after
    the signal, or, inside a gradient-accumulation window, once the window's optimizer step
    is made).

    SLURM's requeue signal (``SIGUSR1`` unless set otherwise), where Lightning's
    ``SLURMEnvironment(auto_requeue=True)`` handles it, is combined the same way. Lightning
    saves its ``hpc_ckpt`` checkpoint and requeues the job from inside its handler, on
    whichever rank and in whatever operation the signal interrupts: a checkpoint of a
    half-made step, and a save (a collective) that the other ranks do not make. Here every
    rank calls that handler at the same step boundary, and training goes on as Lightning's
    does.

    Args:
        trainer: the trainer whose fit loop is checked; installed after Lightning registered
            its signal handlers (the strategy's ``on_train_start``).
        timeout_s: how long the all-reduce may wait for a peer.
        requeue_signal: SLURM's requeue signal when Lightning requeues the job on it; taken
            over only where Lightning registered its own handler for it.
    """

    def __init__(
        self, trainer: pl.Trainer, timeout_s: float, requeue_signal: signal.Signals | None = None
    ) -> None:
        self._trainer = trainer
        self._group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self._signals = StepSignals(trainer, requeue_signal)
        self._pending: tuple[dist.Work, torch.Tensor] | None = None
        # the override: Lightning's per-step broadcast of rank 0's flag becomes this check
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = self.check  # type: ignore[method-assign]

    def check(self) -> None:
        """Act on the flags combined a step ago (every rank reads the same ones, at the same
        batch): requeue, every rank saving, when a rank received the requeue signal, and stop
        when one received SIGTERM; start combining this step's flags."""
        combined = (False, False)
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            self._pending = None
            stop, requeue = flags.tolist()
            combined = (bool(stop), bool(requeue))
        if self._signals.act(*combined):
            raise SIGTERMException
        flags = torch.tensor(self._signals.take(), dtype=torch.int32)
        work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flags)  # type: ignore[assignment]

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
    """Strategy mixin: installs :class:`AgreedStop` when a fit starts with several ranks (with
    the requeue signal of a ``SLURMEnvironment(auto_requeue=True)``) and removes it at
    teardown. Put it first among the bases of a Lightning parallel strategy that sets
    ``_timeout``."""

    _agreed_stop: AgreedStop | None = None

    @override
    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            timeout: timedelta | None = self._timeout  # type: ignore[attr-defined]
            seconds = timeout.total_seconds() if timeout is not None else DEFAULT_TIMEOUT_S
            environment = self.cluster_environment  # type: ignore[attr-defined]
            self._agreed_stop = AgreedStop(trainer, seconds, requeue_signal(environment))

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
