"""A rank's account of a failed or hung collective: which collective, at which step, in
which Lightning hook, written to the run's ``traces`` directory for the launcher's final
message and ``lightning-accel doctor --trace``."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.core.hooks import CheckpointHooks, DataHooks, ModelHooks
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lightning_accel.collectives import (
    STOPPED,
    Collective,
    RankTrace,
    is_collective_error,
    pending_collectives,
    recent_collectives,
    write_trace,
)
from lightning_accel.strategies.agreed_stop import stopped_together

# methods Lightning calls on a module, a DataModule or a callback
_STEPS = {"training_step", "validation_step", "test_step", "predict_step", "backward"}
_STEPS |= {"optimizer_step", "optimizer_zero_grad", "configure_model", "configure_optimizers"}
HOOKS = frozenset(
    _STEPS
    | {
        name
        for hooks in (ModelHooks, DataHooks, CheckpointHooks, pl.Callback)
        for name in vars(hooks)
        if not name.startswith("_")
    }
)
_HOOK_OWNERS = (pl.LightningModule, pl.LightningDataModule, pl.Callback)
# torch.distributed's Python functions that make a collective
_COLLECTIVES_FILE = os.path.join("torch", "distributed", "distributed_c10d.py")
# Lightning's SIGTERM handler broadcasts from rank 0 wherever the signal lands on this rank
# (pinned by tests/test_collective_trace.py): its error means the launcher stopped the rank,
# and its broadcast is not one of the run's collectives
_SIGTERM_HANDLER_FILE = os.path.join(
    "lightning", "pytorch", "trainer", "connectors", "signal_connector.py"
)
_SIGTERM_BROADCAST = Collective("broadcast", sizes=((1,),))


def _frames_innermost_first(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def _traceback_frames_innermost_first(traceback: TracebackType | None) -> list[FrameType]:
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    return frames[::-1]


def hook_of(frames: list[FrameType]) -> tuple[str | None, str | None, str | None]:
    """The innermost Lightning hook among ``frames`` (innermost first) as
    ``Class.method``, its ``file:line``, and the torch.distributed function called
    inside it (None where not found)."""
    public = [  # the function called from outside torch.distributed: the outermost
        f.f_code.co_name
        for f in frames
        if f.f_code.co_filename.endswith(_COLLECTIVES_FILE) and not f.f_code.co_name.startswith("_")
    ]
    collective = public[-1] if public else None
    for frame in frames:
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name in HOOKS and isinstance(owner, _HOOK_OWNERS):
            where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
            return f"{type(owner).__name__}.{frame.f_code.co_name}", where, collective
    return None, None, collective


def in_sigterm_handler(frames: list[FrameType]) -> bool:
    """Whether ``frames`` pass through Lightning's SIGTERM handler."""
    return any(f.f_code.co_filename.endswith(_SIGTERM_HANDLER_FILE) for f in frames)


class CollectiveTrace(pl.Callback):
    """Writes this rank's trace (``<directory>/rank-<N>.json``) when its run fails, and
    when one of its collectives has waited ``after_seconds``: the step, the Lightning hook
    and line it was in, the collective it waited in and its recent collectives (torch's
    flight recorder). Inert in a single process, and silent when every rank stops on SIGTERM
    at one step (an ``AgreedStopMixin`` strategy's stop, which is not a failure).

    Args:
        directory: where the traces go (the runner uses ``<run_dir>/traces``).
        after_seconds: how long a collective may wait before the rank writes a trace while
            still waiting (default: half the strategy's collective timeout, at most 30 s).
        poll_seconds: how often the watching thread looks at the pending collectives.
    """

    def __init__(
        self, directory: str | Path, after_seconds: float | None = None, poll_seconds: float = 1.0
    ) -> None:
        self.directory = Path(directory)
        self.after_seconds = after_seconds
        self.poll_seconds = poll_seconds
        self._trainer: pl.Trainer | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def _active(self) -> bool:
        return self._trainer is not None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or not dist.is_initialized():
            return
        self._trainer = trainer
        if self.after_seconds is None:
            timeout = getattr(trainer.strategy, "_timeout", None)
            seconds = timeout.total_seconds() if timeout is not None else 60.0
            self.after_seconds = min(30.0, max(1.0, seconds / 2))
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="collective-trace", daemon=True)
        self._watcher.start()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop.set()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self._active:
            return
        self._stop.set()
        if stopped_together(trainer, exception):  # nothing failed: no account to give
            return
        frames = _traceback_frames_innermost_first(exception.__traceback__)
        if in_sigterm_handler(frames):
            self._write(frames, error=STOPPED, skip_last=True)
        elif isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._write(frames, error=STOPPED)
        else:
            error = f"{type(exception).__name__}: {exception}".strip()
            self._write(frames, error=error[:4000])

    def _write(
        self,
        frames: list[FrameType],
        error: str | None = None,
        waited: float | None = None,
        skip_last: bool = False,
    ) -> None:
        """Write the trace; ``skip_last`` leaves out the last collective when it is the
        SIGTERM handler's broadcast."""
        assert self._trainer is not None
        hook, where, called = hook_of(frames)
        recent = recent_collectives()
        if skip_last and recent and recent[-1].signature() == _SIGTERM_BROADCAST.signature():
            recent = recent[:-1]
        # waiting or stopped: the last collective not completed; failed inside one: the
        # last one made (a failed collective is retired like a completed one); failed
        # outside any: none, its last is no cause. Outside: no torch.distributed call on
        # the stack, and not a collective's own error (DDP's reducer all-reduces from C++)
        failed = error is not None and error != STOPPED
        outside = failed and called is None and not is_collective_error(error or "")
        candidates = recent if failed else [c for c in recent if not c.completed]
        collective = candidates[-1] if candidates and not outside else None
        if collective is None and called is not None and failed:  # the recorder is off
            collective = Collective(called)
        trace = RankTrace(
            rank=self._trainer.global_rank,
            world=self._trainer.world_size,
            attempt=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            step=self._trainer.global_step,
            hook=hook,
            where=where,
            collective=collective,
            error=error,
            recent=recent,
            waited_seconds=waited,
            written_at=time.time(),
        )
        write_trace(self.directory, trace)

    def _watch(self) -> None:
        """Write a trace once per collective that stays pending past ``after_seconds``."""
        assert self.after_seconds is not None
        seen: dict[str, int] = {}
        since = time.monotonic()
        written: set[tuple[str, int]] = set()
        main = threading.main_thread().ident
        while not self._stop.wait(self.poll_seconds):
            pending = pending_collectives()
            if pending != seen:
                seen, since = pending, time.monotonic()
                continue
            waited = time.monotonic() - since
            fresh = set(pending.items()) - written
            if pending and fresh and waited >= self.after_seconds:
                frame = sys._current_frames().get(main)  # noqa: SLF001 - the main thread's stack
                self._write(list(_frames_innermost_first(frame)), waited=waited)
                written |= fresh
