"""Callbacks: the end-of-run summary and the progress bar."""

from lightning_accel.callbacks.progress import RunProgressBar
from lightning_accel.callbacks.run_summary import RunSummary

__all__ = ["RunProgressBar", "RunSummary"]
