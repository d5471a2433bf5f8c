"""How fast training runs and how well it uses the device: throughput, step time, data
wait, FLOPs, model FLOPs utilization (MFU) and peak memory."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

from lightning_accel.config import require_not_negative, require_positive
from lightning_accel.data.loading import CountsBatches, data_parallel_share
from lightning_accel.devices import PeakFlops, device_peak, synchronized_time
from lightning_accel.flops import STEP_FLOPS_PER_FORWARD_FLOP, flop_counter
from lightning_accel.memory import peak_memory_mb
from lightning_accel.optimize.float8 import float8_matmul_format
from lightning_accel.throughput import ThroughputClock


@runtime_checkable
class DrivesSeveralDevices(Protocol):
    """A strategy whose one process drives several devices (XLA SPMD): the FLOPs counted on
    its global tensors are shared between them."""

    devices_per_process: int


def batch_inputs(batch: Any) -> torch.Tensor | None:
    """The first tensor of a batch: the inputs, by the usual (inputs, targets) convention."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        return next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return None


def data_wait_seconds(trainer: pl.Trainer) -> float | None:
    """Time the loop has waited for training batches, from loaders that count it."""
    loader = trainer.train_dataloader
    return float(loader.wait_seconds) if isinstance(loader, CountsBatches) else None


def model_flops_utilization(
    flops_per_step: float, step_seconds: float, peak: float | None
) -> tuple[float, float | None]:
    """FLOP/s one device achieves, and their share of its ``peak`` FLOP/s (the MFU; None
    without a peak)."""
    achieved = flops_per_step / step_seconds
    return achieved, achieved / peak if peak else None


def compiled_graphs() -> int | None:
    """Graphs torch.compile has built in this process (None when it never ran)."""
    if "torch._dynamo" not in sys.modules:
        return None
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# The speed figures' names; they go to the loggers only, not to Lightning's callback metrics
# (which a checkpoint's or early stopping's monitor reads).
SPEED_NAMESPACE = "speed/"


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates after the training batch that just ended: its own test
    (a private method, pinned in tests/test_upstream_pins.py), asked in on_train_batch_end
    with the state it reads unchanged since."""
    fit_loop = trainer.fit_loop
    data_fetcher = fit_loop._data_fetcher
    return data_fetcher is not None and fit_loop.epoch_loop._should_check_val_fx(data_fetcher)


class SpeedMonitor(pl.Callback):
    """Measures training speed without slowing it, logs it every logging interval and hands
    the whole run's figures to the run summary.

    Logged for the steps since the previous log (keys under ``speed/``): ``step_ms``,
    ``optimizer_step_ms``, ``samples_per_second`` and ``tokens_per_second`` (all ranks
    together), ``data_wait_share``, ``tflops_per_device``, ``mfu`` and ``peak_memory_mb``. The run
    summary gets the same figures over the steady steps, after ``warmup_steps`` (which hold
    compilation and cache warm-up), plus warm-up and compile time and peak memory per rank.

    FLOPs are counted once, over the forward pass of the first training batch, with torch's
    ``FlopCounterMode`` and compiled parts held eager for that pass (torch.compile would skip
    the code it first meets under the counter for the rest of the process); a step is taken
    as three forward passes, the usual convention for model FLOPs, so recomputation under
    activation checkpointing does not count. MFU divides
    the FLOP/s each device achieves by its peak: a vendor figure for known GPUs and TPUs, a
    matmul measured once on CPUs; under float8 training, the peak of the format the
    converted layers multiply in (fp8 on float8 tensor cores, fp32 under emulation). The
    device is synchronized only at logging steps, validation and the end of training, never
    per step. Tokens are counted when the batch inputs are integer token ids; samples
    always. A "step" is one training batch: under gradient accumulation a micro-batch, and
    ``optimizer_step_ms`` is the time of a whole optimizer step (the same as ``step_ms``
    without accumulation), the figure to compare between runs that accumulate differently.

    Args:
        warmup_steps: leading steps left out of the summary figures.
        log_every_n_steps: logging interval in optimizer steps; default the trainer's
            ``log_every_n_steps`` (0 there: no logging).
        count_flops: count FLOPs and report MFU.
        peak_flops: the device's peak FLOP/s, to use instead of the table or measurement.
    """

    def __init__(
        self,
        warmup_steps: int = 5,
        log_every_n_steps: int | None = None,
        count_flops: bool = True,
        peak_flops: float | None = None,
    ) -> None:
        require_not_negative("callbacks.speed.warmup_steps", warmup_steps)
        if log_every_n_steps is not None:
            require_not_negative("callbacks.speed.log_every_n_steps", log_every_n_steps)
        if peak_flops is not None:
            require_positive("callbacks.speed.peak_flops", peak_flops)
        self.warmup_steps = warmup_steps
        self.log_every_n_steps = log_every_n_steps
        self.count_flops = count_flops
        self.peak_flops = peak_flops
        self.figures: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self.all_steps = ThroughputClock()
        self.steady_steps = ThroughputClock()
        self.window = ThroughputClock()
        self.forward_flops: int | None = None
        self.peak: PeakFlops | None = None
        self._counter: FlopCounterMode | None = None
        self._counting = ExitStack()
        self._devices_per_process = 1
        self._paused = False
        self._global_step_seen = 0

    @property
    def flops_per_step(self) -> int | None:
        """Model FLOPs of one training step on one device (None until counted)."""
        if self.forward_flops is None:
            return None
        return STEP_FLOPS_PER_FORWARD_FLOP * self.forward_flops

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self.figures = {}
        self._global_step_seen = trainer.global_step  # a resumed run starts past zero
        strategy = trainer.strategy
        several = isinstance(strategy, DrivesSeveralDevices)
        self._devices_per_process = strategy.devices_per_process if several else 1
        if self.count_flops:
            if self.peak_flops:
                self.peak = PeakFlops(self.peak_flops, "given")
            else:
                self.peak = device_peak(
                    pl_module.device, str(trainer.precision), float8_matmul_format(pl_module)
                )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the loader's waiting is read only where a clock starts or resumes, not every step
        if not self.all_steps.started:
            now = synchronized_time(pl_module.device)
            self.all_steps.start(now, data_wait_seconds(trainer) or 0.0)
            self._start_window(trainer, now)
            if self.count_flops:
                self._counter = flop_counter()
                self._counting.enter_context(torch.compiler.set_stance("force_eager"))
                self._counting.enter_context(self._counter)
        if not self.steady_steps.started and trainer.global_step >= self.warmup_steps:
            now = synchronized_time(pl_module.device)
            self.steady_steps.start(now, data_wait_seconds(trainer) or 0.0)
        if self._paused:
            now, waited = synchronized_time(pl_module.device), data_wait_seconds(trainer) or 0.0
            for clock in self._clocks:
                clock.resume(now, waited)
            self._paused = False

    @property
    def _clocks(self) -> tuple[ThroughputClock, ...]:
        return (self.all_steps, self.steady_steps, self.window)

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self._counter is not None:
            self._counting.close()
            # one process driving several devices (XLA SPMD) counts the global step's FLOPs
            self.forward_flops = self._counter.get_total_flops() // self._devices_per_process
            self._counter = None

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_counting()

    # Lightning runs checkpoint callbacks after all others: pausing here also leaves out the
    # checkpoints saved at the end of validation and of the epoch, until the next step starts.
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(trainer, pl_module.device)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(trainer, pl_module.device)

    def _pause(self, trainer: pl.Trainer, device: torch.device) -> None:
        if not self._paused:
            now, waited = synchronized_time(device), data_wait_seconds(trainer) or 0.0
            for clock in self._clocks:
                clock.pause(now, waited)
            self._paused = True

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._stop_counting()  # a step without a backward pass
        inputs = batch_inputs(batch)
        samples = inputs.shape[0] if inputs is not None and inputs.ndim > 0 else 0
        tokens = inputs.numel() if samples and not inputs.is_floating_point() else 0
        # the optimizer has stepped (or not, inside an accumulation window) before this hook
        optimizer_steps = trainer.global_step - self._global_step_seen
        self._global_step_seen = trainer.global_step
        for clock in self._clocks:
            if clock.started:
                clock.count(samples, tokens, optimizer_steps)
        # every n optimizer steps, as Lightning logs; an interval of 0 logs nothing
        interval = self.log_every_n_steps or trainer.log_every_n_steps
        if interval and self.window.optimizer_steps >= interval:
            self._log_window(trainer, pl_module.device)
        # Lightning starts the validation loader's iterator (its workers, on a GPU machine
        # a fraction of a second) before on_validation_start: the pause is taken here
        if validation_follows(trainer):
            self._pause(trainer, pl_module.device)

    def _start_window(self, trainer: pl.Trainer, now: float) -> None:
        self.window = ThroughputClock()
        self.window.start(now, data_wait_seconds(trainer) or 0.0)

    def _log_window(self, trainer: pl.Trainer, device: torch.device) -> None:
        now = synchronized_time(device)
        seconds = self.window.seconds(now)
        metrics = self._speed(trainer, self.window, seconds, device, rounded=False)
        metrics["peak_memory_mb"] = peak_memory_mb(device)
        logged = {f"{SPEED_NAMESPACE}{k}": float(v) for k, v in metrics.items() if v is not None}
        # at the index of the window's last batch, where Lightning logs that batch's loss
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step - 1)
        self._start_window(trainer, now)

    def _speed(
        self,
        trainer: pl.Trainer,
        clock: ThroughputClock,
        seconds: float,
        device: torch.device,
        rounded: bool = True,
    ) -> dict[str, Any]:
        """Step time, throughput (every data-parallel rank's batches; the ranks of a tensor
        parallel group share one), data wait share and MFU of a measured stretch."""

        def keep(value: float, digits: int) -> float:
            return float(f"{value:.{digits}g}") if rounded else value

        world = data_parallel_share(trainer)["num_replicas"]
        step = seconds / clock.steps if clock.steps and seconds > 0 else None
        optimizer_step = (
            seconds / clock.optimizer_steps if clock.optimizer_steps and seconds > 0 else None
        )
        figures: dict[str, Any] = {
            "step_ms": keep(step * 1000, 6) if step else None,
            "optimizer_step_ms": keep(optimizer_step * 1000, 6) if optimizer_step else None,
            "samples_per_second": clock.rate(clock.samples * world, seconds),
            "tokens_per_second": clock.rate(clock.tokens * world, seconds)
            if clock.tokens
            else None,
            "data_wait_share": None,
            "tflops_per_device": None,
            "mfu": None,
        }
        waited = data_wait_seconds(trainer)
        if waited is not None and seconds > 0:
            figures["data_wait_share"] = keep(clock.waited(waited) / seconds, 3)
        if step and self.flops_per_step:
            peak = self.peak.flops_per_second if self.peak else None
            achieved, mfu = model_flops_utilization(self.flops_per_step, step, peak)
            figures["tflops_per_device"] = keep(achieved / 1e12, 4)
            figures["mfu"] = keep(mfu, 4) if mfu is not None else None
        return figures

    def _warmup_figures(
        self, pl_module: pl.LightningModule, step: float | None, now: float
    ) -> dict[str, Any]:
        """Time of the warm-up steps, and of compilation (when the model has compiled parts):
        what the warm-up steps took beyond as many steady steps."""
        if not self.steady_steps.steps or step is None:
            return {"warmup_seconds": None, "compile_seconds": None}
        warmup = self.all_steps.seconds(now) - self.steady_steps.seconds(now)
        warmup_steps = self.all_steps.steps - self.steady_steps.steps
        compiled = any(getattr(m, "_compiled_call_impl", None) for m in pl_module.modules())
        extra = round(max(0.0, warmup - warmup_steps * step), 3)
        return {"warmup_seconds": round(warmup, 3), "compile_seconds": extra if compiled else None}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        steady = bool(self.steady_steps.steps)
        clock = self.steady_steps if steady else self.all_steps
        now = synchronized_time(device)
        seconds = clock.seconds(now)
        speed = self._speed(trainer, clock, seconds, device)
        step = speed.pop("step_ms")
        step_seconds = step / 1000 if step else None
        optimizer_step = speed.pop("optimizer_step_ms")
        # every rank takes part in the gather, while the process group is still up
        mine = torch.tensor([peak_memory_mb(device)], dtype=torch.float64, device=device)
        peaks = trainer.strategy.all_gather(mine).reshape(-1).cpu().tolist()
        self.figures = {
            "measured_steps": clock.steps,
            "step_seconds": round(step_seconds, 5) if step_seconds else None,
            "optimizer_step_seconds": round(optimizer_step / 1000, 5) if optimizer_step else None,
            **self._warmup_figures(pl_module, step_seconds, now),
            **speed,
            "flops_per_step": self.flops_per_step,
            # significant digits: a CPU core's peak is a fraction of a TFLOP/s
            "peak_tflops_per_device": float(f"{self.peak.flops_per_second / 1e12:.4g}")
            if self.peak
            else None,
            "peak_flops_source": self.peak.source if self.peak else None,
            "peak_memory_mb_per_rank": [round(p, 1) for p in peaks],
            "compiled_graphs": compiled_graphs(),
        }

    def summary_figures(self) -> dict[str, Any]:
        """The figures the run summary reports."""
        return self.figures
