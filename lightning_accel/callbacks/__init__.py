"""Callbacks: the speed monitor, the end-of-run summary, the progress bar, the model
summary, the XLA recompile guard, the report of where a run kept its state, the checkpoints
saved where a run ends and where it stops on SIGTERM, the weight average a
finished run can be continued from, the random state and metrics history
a resumed fit continues from, and (from the strategies, its multi-rank counterpart) the
one-process stop at an optimizer step's end."""

from lightning_accel.callbacks.device_report import DeviceReport
from lightning_accel.callbacks.ema import ResumableEMA
from lightning_accel.callbacks.exact_resume import ExactResume
from lightning_accel.callbacks.model_summary import RunModelSummary
from lightning_accel.callbacks.preemption import PreemptionCheckpoint
from lightning_accel.callbacks.progress import RunProgressBar
from lightning_accel.callbacks.recompile_guard import XLARecompileGuard
from lightning_accel.callbacks.run_checkpoint import RunCheckpoint
from lightning_accel.callbacks.run_summary import RunSummary
from lightning_accel.callbacks.speed import SpeedMonitor
from lightning_accel.strategies.step_signals import StepBoundaryStop

__all__ = [
    "DeviceReport",
    "PreemptionCheckpoint",
    "ExactResume",
    "ResumableEMA",
    "RunCheckpoint",
    "RunModelSummary",
    "RunProgressBar",
    "RunSummary",
    "SpeedMonitor",
    "StepBoundaryStop",
    "XLARecompileGuard",
]
