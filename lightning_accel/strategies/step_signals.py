"""SIGTERM and SLURM's requeue signal, recorded by their handlers and acted on where an
optimizer step has ended: the part of a graceful stop that the agreed multi-rank stop and the
one-process callback share."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from typing_extensions import override

log = logging.getLogger(__name__)


class StepSignals:
    """The SIGTERM and requeue signals a process received, recorded by handlers that do
    nothing else, and acted on between optimizer steps.

    Lightning's handlers act where the signal lands: its SIGTERM flag stops the fit after the
    current batch, even inside a gradient-accumulation window, and its requeue handler saves
    ``hpc_ckpt_N.ckpt`` in the middle of whatever the signal interrupted. A checkpoint saved
    inside a window lacks the window's accumulated gradients, so a run resumed from it ends
    with other weights than a run that never stopped. Here a signal is noted as due and acted
    on at the first :meth:`act` after a batch that ended an optimizer step.

    Lightning's handlers are replaced (Lightning restores the handlers it found at its
    teardown); a SIGTERM handler the user had set before the fit is still called, and a
    requeue signal with a handler of the user's own is left alone, as Lightning leaves it.

    Args:
        trainer: the trainer whose fit is running; created after Lightning registered its
            handlers (``on_train_start``).
        requeue_signal: SLURM's requeue signal when Lightning requeues the job on it (see
            :func:`requeue_signal`); taken over only where Lightning registered its handler.
    """

    def __init__(self, trainer: pl.Trainer, requeue_signal: signal.Signals | None = None) -> None:
        self._trainer = trainer
        self._sigterm = False
        # requeue signals received, and how many of them take() has handed out
        self._requeues = self._requeues_taken = 0
        self._stop_due = self._requeue_due = False
        earlier = trainer._signal_connector._original_handlers
        self._earlier_handler = earlier.get(signal.SIGTERM)
        lightning_requeues = requeue_signal is not None and earlier.get(requeue_signal) in (
            None,
            signal.SIG_DFL,
        )
        self._requeue_signal = requeue_signal if lightning_requeues else None
        if threading.current_thread() is threading.main_thread():  # as Lightning registers
            signal.signal(signal.SIGTERM, self._on_sigterm)
            if self._requeue_signal is not None:
                signal.signal(self._requeue_signal, self._on_requeue_signal)

    def _log_received(self, what: str) -> None:
        # a rank's log says which rank the signal reached; one process's console already
        # says where the run stopped
        level = logging.INFO if self._trainer.world_size > 1 else logging.DEBUG
        log.log(level, "rank %d received %s", self._trainer.global_rank, what)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._log_received("SIGTERM")
        if not self._sigterm and self._trainer.strategy.launcher is not None:
            self._trainer.strategy.launcher.kill(signum)  # a script launcher's child ranks
        self._sigterm = True
        if callable(self._earlier_handler):
            self._earlier_handler(signum, frame)

    def _on_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        self._log_received(f"the requeue signal {signum}")
        self._requeues += 1

    def take(self) -> tuple[bool, bool]:
        """Whether this process has received SIGTERM, and whether it has received a requeue
        signal since the last call."""
        received = self._requeues  # a signal landing after this is handed out next time
        requeue = received > self._requeues_taken
        self._requeues_taken = received
        return self._sigterm, requeue

    def act(self, stop: bool, requeue: bool) -> bool:
        """Note ``stop`` and ``requeue`` as due, and act on what is due when the last batch
        the fit loop started ended an optimizer step: requeue (Lightning saves
        ``hpc_ckpt_N.ckpt`` and runs ``scontrol requeue``; training goes on), and mark the
        SIGTERM Lightning stops on. Returns whether the fit stops here."""
        self._stop_due |= stop
        self._requeue_due |= requeue
        nothing_due = not (self._stop_due or self._requeue_due)
        if nothing_due or not optimizer_step_ended(self._trainer):
            return False
        if self._requeue_due:
            self._requeue_due = False
            # private Lightning API (pinned by tests/test_preemption.py): save, requeue
            self._trainer._signal_connector._slurm_sigusr_handler_fn(self._requeue_signal, None)
        if self._stop_due:
            self._trainer._signal_connector.received_sigterm = True
        return self._stop_due


def optimizer_step_ended(trainer: pl.Trainer) -> bool:
    """Whether the last training batch the fit loop started in this epoch closed its
    gradient-accumulation window (Lightning steps the optimizer after it), or none has
    started yet: a checkpoint saved here holds no accumulated gradients."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    started = progress.current.ready
    return (
        started % trainer.accumulate_grad_batches == 0
        or progress.is_last_batch
        or started == trainer.num_training_batches
    )


def requeue_signal(environment: ClusterEnvironment | None) -> signal.Signals | None:
    """The signal on which Lightning saves and requeues a SLURM job, if ``environment``
    asks it to."""
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


def lightning_may_act_mid_step(accumulate_grad_batches: int, plugins: list[Any]) -> bool:
    """Whether Lightning's own handling of the signals could act inside an optimizer step of
    a one-process fit: with gradient accumulation (it stops after any micro-batch), or under
    a SLURM environment that requeues (it saves from inside the signal handler), given in
    ``plugins`` or, where none is given, detected as Lightning detects it."""
    environments = [p for p in plugins if isinstance(p, ClusterEnvironment)]
    if environments:
        requeues = requeue_signal(environments[0]) is not None
    else:  # Lightning's detected SLURMEnvironment requeues by default
        requeues = SLURMEnvironment.detect()
    return accumulate_grad_batches > 1 or requeues


class StepBoundaryStop(pl.Callback):
    """Stops a one-process fit on SIGTERM, and saves and requeues it on SLURM's requeue
    signal, at the end of the optimizer step the signal interrupted.

    Lightning stops after the batch in progress, even one inside a gradient-accumulation
    window, and a checkpoint saved at that stop (:class:`PreemptionCheckpoint`) resumes to
    other weights than a run that never stopped; with ``SLURMEnvironment(auto_requeue=True)``
    it saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, mid-step. With this callback
    the fit stops (or saves and requeues, then goes on) at the end of the first batch that
    ends an optimizer step after the signal (see :class:`StepSignals`). ``build_trainer``
    adds it where Lightning could act inside a step (:func:`lightning_may_act_mid_step`);
    elsewhere Lightning's stop already comes after a whole step, and a run is spared the
    per-step dispatch of one more callback's hooks. Several ranks agree on the step instead
    (:class:`AgreedStopMixin` strategies, ``accel_ddp`` and ``fsdp2``), so there it does
    nothing.
    """

    _signals: StepSignals | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            # private Lightning API (pinned by tests/test_preemption.py): the environment
            # Lightning registered its requeue handler for
            environment = trainer._accelerator_connector.cluster_environment
            self._signals = StepSignals(trainer, requeue_signal(environment))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        # Lightning raises its SIGTERMException once this batch has ended
        if self._signals is not None:
            self._signals.act(*self._signals.take())

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._signals = None  # Lightning's teardown restores the handlers it found
