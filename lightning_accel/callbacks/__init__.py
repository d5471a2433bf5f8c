"""Callbacks: the end-of-run summary."""

from lightning_accel.callbacks.run_summary import RunSummary

__all__ = ["RunSummary"]
