"""When a callback reads the values Lightning logs: once per logged optimizer step."""

from __future__ import annotations


def unread_logged_step(step: int, interval: int, last_read: int | None) -> bool:
    """Whether optimizer step ``step`` is one Lightning logs (a multiple of ``interval``; an
    interval of 0 logs none) and was not read yet (``last_read``). Under gradient
    accumulation the step's count stays the same over the next window's micro-batches, and
    each read of a device value waits for the device, so it is read at the first alone."""
    return bool(interval) and step != last_read and step % interval == 0
