"""Callbacks: the speed monitor, the end-of-run summary, the progress bar and the XLA
recompile guard."""

from lightning_accel.callbacks.progress import RunProgressBar
from lightning_accel.callbacks.recompile_guard import XLARecompileGuard
from lightning_accel.callbacks.run_summary import RunSummary
from lightning_accel.callbacks.speed import SpeedMonitor

__all__ = ["RunProgressBar", "RunSummary", "SpeedMonitor", "XLARecompileGuard"]
