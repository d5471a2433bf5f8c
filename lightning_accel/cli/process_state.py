"""What one job of a sweep would leave in the process for the next: Hydra's local launcher
runs the jobs of a ``--multirun`` one after another in one process."""

from __future__ import annotations

import warnings

# torch's float32 matmul precision and cuDNN autotuning where the process began its first job
_first_job_matmul_precision: str | None = None
_first_job_cudnn_benchmark = False


def start_job_as_its_own_process() -> None:
    """Give this job torch's process-wide state as a process of its own would start it:
    the float32 matmul precision the first job began with (an optimization profile that
    names one sets it for the process, and a later job whose profile names none, such as
    ``default`` after ``fast``, ran at it: TF32 matmuls on a GPU), cuDNN's autotuning as
    the first job began (``trainer.benchmark=true`` set it for the process, and a later
    job's ``null``, the default, kept it), and no compiled graphs (a later job's
    compilations were served from the earlier job's caches and counted against its
    recompile limit)."""
    global _first_job_matmul_precision, _first_job_cudnn_benchmark
    import torch

    if _first_job_matmul_precision is None:
        with warnings.catch_warnings():  # torch 2.9 asks to use its newer TF32 settings
            warnings.simplefilter("ignore")
            _first_job_matmul_precision = torch.get_float32_matmul_precision()
        _first_job_cudnn_benchmark = torch.backends.cudnn.benchmark
        return
    torch.set_float32_matmul_precision(_first_job_matmul_precision)
    torch.backends.cudnn.benchmark = _first_job_cudnn_benchmark
    torch.compiler.reset()


def allocator_note(keep_freed_host_memory: bool) -> str | None:
    """What a job asking for the C allocator's defaults gets in a process where an earlier
    job made it keep freed memory, which cannot be undone (None where nothing differs)."""
    from lightning_accel.host_allocator import keeps_freed_host_memory

    if keep_freed_host_memory or not keeps_freed_host_memory():
        return None
    return (
        "optimization.keep_freed_host_memory=false cannot apply to a job that trains in "
        "this process: an earlier job of the sweep made its allocator keep freed memory, "
        "which cannot be undone; `lightning-accel bench` compares the two settings, each "
        "cell in a process of its own"
    )
