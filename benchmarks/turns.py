"""Two training processes that take turns at running blocks of steps, so that a comparison of
their step times holds while the machine's speed drifts.

On a shared 2-core machine the speed of the same loop moves by ±20% between two runs a minute
apart, in CPU time as much as in wall time (the cores themselves slow down), so whole runs
in turn cannot resolve a few per cent. Here the two sides run at the same time but never
together: after its warm-up, each side waits for a baton, runs ``block_steps`` steps, records
their wall time and hands the baton back, ``blocks`` times. A block of one side and the
other side's next block are a second or so apart, and a drift slower than that touches both
alike. The baton is a byte in a named pipe (Linux).

The plain loop calls :meth:`Turns.at_step` at the top of every step; a Lightning run takes
turns through the :class:`TakeTurns` callback (``callbacks.extra=[{_target_:
turns.TakeTurns, ...}]`` with ``benchmarks`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

SIDES = ("plain", "pack")
BATON = b"."


def steps_in_turns(warmup_steps: int, block_steps: int, blocks: int) -> int:
    """Steps each side runs: the warm-up, the blocks, and one step after the last block
    (whose start closes it)."""
    return warmup_steps + blocks * block_steps + 1


class PartnerGone(RuntimeError):
    """The other side did not hand the baton back in time: it died or hangs."""


class Turns:
    """One side's share of the turn-taking in ``directory`` (made by :func:`make_pipes`).

    Args:
        directory: holds a named pipe per side and the sides' ready marks.
        side: ``plain`` or ``pack``.
        warmup_steps: steps run before the first turn, at any time.
        block_steps: steps per turn.
        blocks: turns per side.
        timeout: seconds to wait for the baton before giving up with :class:`PartnerGone`.
    """

    def __init__(
        self,
        directory: str | Path,
        side: str,
        warmup_steps: int,
        block_steps: int,
        blocks: int,
        timeout: float = 300.0,
    ) -> None:
        self.directory = Path(directory)
        self.side = side
        other = SIDES[1 - SIDES.index(side)]
        self.warmup_steps = warmup_steps
        self.block_steps = block_steps
        self.blocks = blocks
        self.timeout = timeout
        # read-write opens of a pipe do not wait for the other end to open it
        self._mine = os.open(self.directory / side, os.O_RDWR)
        self._theirs = os.open(self.directory / other, os.O_RDWR)
        self.block_seconds: list[float] = []
        self._started: float | None = None
        self.done = False

    @property
    def total_steps(self) -> int:
        """Steps each side runs (:func:`steps_in_turns`)."""
        return steps_in_turns(self.warmup_steps, self.block_steps, self.blocks)

    def at_step(self, step: int) -> None:
        """Called at the start of step ``step`` (steps done so far)."""
        if self.done or step < self.warmup_steps:
            return
        if step == self.warmup_steps:
            (self.directory / f"{self.side}.ready").touch()
            self._start_block()
            return
        if (step - self.warmup_steps) % self.block_steps:
            return
        self.block_seconds.append(time.perf_counter() - self._started)
        os.write(self._theirs, BATON)
        if len(self.block_seconds) < self.blocks:
            self._start_block()
            return
        # the partner's last block runs alone; then both sides go on to finish together
        self._wait()
        os.write(self._theirs, BATON)
        self.done = True

    def _start_block(self) -> None:
        self._wait()
        self._started = time.perf_counter()

    def _wait(self) -> None:
        ready, _, _ = select.select([self._mine], [], [], self.timeout)
        if not ready:
            raise PartnerGone(
                f"the {self.side} side waited {self.timeout:g} s for its turn; the other side "
                "died or hangs"
            )
        os.read(self._mine, 1)

    def close(self) -> None:
        os.close(self._mine)
        os.close(self._theirs)


def make_pipes(directory: Path) -> None:
    """Make the pipes of a turn-taking in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for side in SIDES:
        os.mkfifo(directory / side)


def wait_until_ready(
    directory: Path,
    sides: tuple[str, ...] = SIDES,
    alive: Callable[[], bool] = lambda: True,
    timeout: float = 600.0,
) -> None:
    """Wait until each of ``sides`` has warmed up and waits for its first turn; raises
    :class:`PartnerGone` after ``timeout`` seconds, or as soon as ``alive`` says a side
    ended."""
    deadline = time.monotonic() + timeout
    while not all((directory / f"{side}.ready").exists() for side in sides):
        if not alive():
            raise PartnerGone("a side ended before its first turn")
        if time.monotonic() > deadline:
            raise PartnerGone(f"a side was not ready after {timeout:g} s")
        time.sleep(0.05)


def hand_first_baton(directory: Path, first: str, timeout: float = 600.0) -> None:
    """Hand the baton to ``first`` once both sides have warmed up."""
    wait_until_ready(directory, timeout=timeout)
    descriptor = os.open(directory / first, os.O_RDWR)
    os.write(descriptor, BATON)
    os.close(descriptor)


class TakeTurns(pl.Callback):
    """A Lightning run's side of a :class:`Turns`: a turn starts and ends at the start of a
    training batch, after the batch was fetched, as a plain loop's step would; the block
    times go to ``record`` (JSON) at the end of training. Arguments as :class:`Turns`."""

    def __init__(
        self, directory: str, warmup_steps: int, block_steps: int, blocks: int, record: str
    ) -> None:
        self.turns = Turns(directory, "pack", warmup_steps, block_steps, blocks)
        self.record = Path(record)
        self._batches = 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.turns.at_step(self._batches)
        self._batches += 1

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record.write_text(json.dumps(self.turns.block_seconds))
        self.turns.close()
