"""Wall-clock throughput of training steps that stays correct on asynchronous devices."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ThroughputClock:
    """Counts samples and tokens over a stretch of training and the wall time it took,
    with pauses (validation) left out. The device is synchronized only when the clock
    starts, pauses, resumes or is read, never per step."""

    def __init__(self) -> None:
        self.samples = 0
        self.tokens = 0
        self.steps = 0
        self._seconds = 0.0
        self._since: float | None = None
        self.started = False

    def start(self, device: torch.device) -> None:
        synchronize(device)
        self.started = True
        self._since = time.perf_counter()

    def pause(self, device: torch.device) -> None:
        if self._since is not None:
            synchronize(device)
            self._seconds += time.perf_counter() - self._since
            self._since = None

    def resume(self, device: torch.device) -> None:
        if self.started and self._since is None:
            synchronize(device)
            self._since = time.perf_counter()

    def count(self, samples: int, tokens: int) -> None:
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

    def seconds(self, device: torch.device) -> float:
        """Measured time so far (the clock keeps running)."""
        self.pause(device)
        self.resume(device)
        return self._seconds

    def rate(self, count: int, seconds: float) -> float | None:
        return round(count / seconds, 2) if seconds > 0 else None
