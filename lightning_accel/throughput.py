"""Wall-clock throughput of training steps that stays correct on asynchronous devices."""

from __future__ import annotations


class ThroughputClock:
    """Counts samples, tokens, training batches (``steps``) and optimizer steps over a
    stretch of training, the wall time it took and the time spent waiting for batches in
    it, with pauses (validation) left out. It is given the time and the loader's running
    total of waiting at each start, pause and resume, so that one device synchronization
    can serve several clocks, and a batch fetched outside the stretch (the first one, the
    one after a validation) counts in neither. Under gradient accumulation a step is one
    micro-batch and several make an optimizer step."""

    def __init__(self) -> None:
        self.samples = 0
        self.tokens = 0
        self.steps = 0
        self.optimizer_steps = 0
        self._seconds = 0.0
        self._waited = 0.0
        self._since: float | None = None
        self._waited_since = 0.0
        self.started = False

    def start(self, now: float, waited: float = 0.0) -> None:
        self.started = True
        self._since, self._waited_since = now, waited

    def pause(self, now: float, waited: float = 0.0) -> None:
        if self._since is not None:
            self._seconds += now - self._since
            self._waited += waited - self._waited_since
            self._since = None

    def resume(self, now: float, waited: float = 0.0) -> None:
        if self.started and self._since is None:
            self._since, self._waited_since = now, waited

    def count(self, samples: int, tokens: int, optimizer_steps: int) -> None:
        """Count one training batch, and the optimizer steps taken at its end."""
        self.steps += 1
        self.optimizer_steps += optimizer_steps
        self.samples += samples
        self.tokens += tokens

    def seconds(self, now: float) -> float:
        """Measured time up to ``now`` (the clock keeps running)."""
        running = now - self._since if self._since is not None else 0.0
        return self._seconds + running

    def waited(self, waited: float) -> float:
        """Time spent waiting for batches in the measured time, given the loader's running
        total now."""
        running = waited - self._waited_since if self._since is not None else 0.0
        return self._waited + running

    def rate(self, count: int, seconds: float) -> float | None:
        return round(count / seconds, 2) if seconds > 0 else None
