"""What the pack knows of devices: peak dense matmul throughput (the denominator of model
FLOPs utilization), memory and interconnect bandwidth.

Accelerators are looked up in a table of vendor figures (dense, without sparsity); a CPU's
peak is measured once per process with a large matmul in the precision the run computes in.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_accel.xla import runtime as xla_runtime

TERA = 1e12

# Dense tensor-core figures per GPU, in TFLOP/s, by number format. Datasheets quote fp8,
# bf16, fp16 and tf32 "with sparsity"; the dense figure is half of that. fp8 only where the
# GPU has float8 tensor cores (sm_89 and newer: not the A100).
_GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 datasheet (SXM5, PCIe and NVL columns):
    # https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
    "H100 SXM": {"fp8": 1978.9, "bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"fp8": 1513.0, "bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"fp8": 1670.5, "bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    # NVIDIA H200 datasheet (SXM and NVL columns):
    # https://www.nvidia.com/en-us/data-center/h200/
    "H200 SXM": {"fp8": 1979.0, "bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
    "H200 NVL": {"fp8": 1670.5, "bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    # NVIDIA HGX B200 datasheet, eight GPUs per board (72 PFLOPS fp8 and 36 PFLOPS bf16
    # with sparsity):
    # https://www.nvidia.com/en-us/data-center/hgx/
    "B200": {"fp8": 4500.0, "bf16": 2250.0, "fp16": 2250.0, "tf32": 1125.0, "fp32": 75.0},
    # NVIDIA A100 datasheet (SXM4 and PCIe share these figures):
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    # NVIDIA L4 datasheet: https://www.nvidia.com/en-us/data-center/l4/
    "L4": {"fp8": 242.5, "bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
}

# bf16 TFLOP/s per chip from Google Cloud's TPU system architecture pages
# (https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e). TPUs run fp32 matmuls at
# bf16 speed by default, so one figure serves every precision.
_TPU_PEAK_TFLOPS: dict[str, float] = {
    "TPU v4": 275.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6e": 918.0,
}

# Memory per device (GiB, datasheet capacity) and interconnect bandwidth to peers (GB/s,
# one direction: half the bidirectional figure), from the same datasheets and pages.
# NVLink 4 (H100 SXM, H200): 900 GB/s bidirectional; H100 NVL's bridge 600; H100 PCIe and
# L4: PCIe Gen5 x16 (128 GB/s) and Gen4 x16 (64 GB/s); A100 SXM: NVLink 3, 600; B200:
# NVLink 5, 1.8 TB/s. TPUs: bidirectional ICI per chip (v5e 400, v5p 1200, v6e 800 GB/s);
# v4's page gives none, so its all-reduce bandwidth per pod over its chips (1.1 PB/s / 4096).
_MEMORY_GIB: dict[str, float] = {
    "H100 SXM": 80, "H100 PCIe": 80, "H100 NVL": 94, "H200 SXM": 141, "H200 NVL": 141,
    "B200": 180, "A100": 80, "L4": 24,
    "TPU v4": 32, "TPU v5e": 16, "TPU v5p": 95, "TPU v6e": 32,
}  # fmt: skip
_LINK_GBPS: dict[str, float] = {
    "H100 SXM": 450, "H100 PCIe": 64, "H100 NVL": 300, "H200 SXM": 450, "H200 NVL": 450,
    "B200": 900, "A100": 300, "L4": 32,
    "TPU v4": 268, "TPU v5e": 200, "TPU v5p": 600, "TPU v6e": 400,
}  # fmt: skip


@dataclass(frozen=True)
class DeviceSpec:
    """A device of the datasheet table, as ``lightning-accel plan`` models it.

    Args:
        name: the table's name (``H100 SXM``, ``TPU v5p``, ...).
        memory_bytes: memory per device.
        peak_tflops: dense peak per number format (``bf16``, ``fp16``, ``tf32``, ``fp32``;
            ``fp8`` for GPUs with float8 tensor cores).
        link_bytes_per_second: bandwidth to peers in one direction (NVLink, ICI or PCIe).
    """

    name: str
    memory_bytes: int
    peak_tflops: dict[str, float]
    link_bytes_per_second: float

    def peak(self, precision: str, float32_matmul_precision: str = "highest") -> float:
        """Peak FLOP/s for a run in ``precision``."""
        return self.peak_tflops[number_format(precision, float32_matmul_precision)] * TERA


def known_devices() -> list[str]:
    """Names of the devices in the table, GPUs first."""
    return [*_GPU_PEAK_TFLOPS, *_TPU_PEAK_TFLOPS]


def device_spec(name: str) -> DeviceSpec | None:
    """The table's entry for ``name`` (a table name such as ``H100 SXM``, or a driver's name
    such as ``NVIDIA H100 80GB HBM3`` or a TPU kind); None for a device it does not know."""
    known = name if name in known_devices() else _match(name, _GPU_NAMES + _TPU_KINDS)
    if known is None:
        return None
    if known in _TPU_PEAK_TFLOPS:  # fp32 matmuls run at bf16 speed on TPUs
        peaks = dict.fromkeys(("bf16", "fp16", "tf32", "fp32"), _TPU_PEAK_TFLOPS[known])
    else:
        peaks = _GPU_PEAK_TFLOPS[known]
    return DeviceSpec(known, int(_MEMORY_GIB[known] * 2**30), peaks, _LINK_GBPS[known] * 1e9)


# How drivers name the devices above, checked in order (most specific first).
_GPU_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("h100", "nvl"), "H100 NVL"),
    (("h100", "pcie"), "H100 PCIe"),
    (("h100",), "H100 SXM"),
    (("h200", "nvl"), "H200 NVL"),
    (("h200",), "H200 SXM"),
    (("b200",), "B200"),
    (("a100",), "A100"),
    (("l4",), "L4"),
)
_TPU_KINDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("v6", "lite"), "TPU v6e"),
    (("v6e",), "TPU v6e"),
    (("v5", "lite"), "TPU v5e"),
    (("v5litepod",), "TPU v5e"),
    (("v5e",), "TPU v5e"),
    (("v5p",), "TPU v5p"),
    (("v5",), "TPU v5p"),
    (("v4",), "TPU v4"),
)


@dataclass(frozen=True)
class PeakFlops:
    """A device's peak FLOP/s for one number format, and where the figure comes from."""

    flops_per_second: float
    source: str


def _match(name: str, patterns: tuple[tuple[tuple[str, ...], str], ...]) -> str | None:
    """The first known device whose every word appears as a whole word in ``name``."""
    lowered = name.lower()
    for words, known in patterns:
        if all(re.search(rf"\b{word}\b", lowered) for word in words):
            return known
    return None


def number_format(precision: str, float32_matmul_precision: str = "highest") -> str:
    """The matmul number format a Lightning precision computes in: ``bf16``, ``fp16``,
    ``fp64``, ``tf32`` (fp32 with TensorFloat-32 matmuls allowed) or ``fp32``."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("64"):
        return "fp64"
    return "fp32" if float32_matmul_precision == "highest" else "tf32"


def gpu_peak(
    device_name: str,
    precision: str,
    float32_matmul_precision: str,
    matmul_format: str | None = None,
) -> PeakFlops | None:
    """The datasheet peak of a GPU named ``device_name`` (as its driver reports it) in
    ``matmul_format`` (default: the format ``precision`` computes in; ``fp8`` under float8
    training), or None for a GPU or format the table does not know."""
    known = _match(device_name, _GPU_NAMES)
    fmt = matmul_format or number_format(precision, float32_matmul_precision)
    if known is None or fmt not in _GPU_PEAK_TFLOPS[known]:
        return None
    return PeakFlops(_GPU_PEAK_TFLOPS[known][fmt] * TERA, f"{known} datasheet, dense {fmt}")


def tpu_peak(device_kind: str) -> PeakFlops | None:
    """The published bf16 peak of a TPU chip of ``device_kind`` (e.g. ``TPU v5litepod``)."""
    known = _match(device_kind, _TPU_KINDS)
    if known is None:
        return None
    return PeakFlops(_TPU_PEAK_TFLOPS[known] * TERA, f"{known} published bf16 peak")


@functools.cache
def measured_cpu_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 8) -> PeakFlops:
    """The fastest of ``repeats`` ``size``-square matmuls in ``dtype`` on this process's CPU
    threads, as FLOP/s (measured once per process and format). The matmul is a linear
    layer's (``F.linear``), the kernel models run: on CPUs without bf16 instructions
    ``torch.mm`` in bf16 takes a path ten times slower, which no layer uses.

    Each matmul's time is the shorter of its wall time and the CPU time the process spent
    per thread: on a busy machine the wall time includes time the threads waited for a
    core, which would make the peak too low (and MFU above 1); the CPU time does not."""
    # from a generator of its own: measured at a run's start, it must not move the run's
    # random stream (its dropout masks would differ with the speed monitor or without it)
    numbers = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=numbers).to(dtype)
    b = torch.randn(size, size, generator=numbers).to(dtype)
    F.linear(a, b)  # first call selects and warms the kernel
    threads = torch.get_num_threads()
    fastest = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        F.linear(a, b)
        busy = (time.process_time() - cpu) / threads
        fastest = min(fastest, time.perf_counter() - wall, busy)
    name = str(dtype).removeprefix("torch.")
    source = f"measured {name} matmul, {threads} thread{'s' if threads > 1 else ''}"
    return PeakFlops(2 * size**3 / fastest, source)


def device_peak(
    device: torch.device, precision: str, matmul_format: str | None = None
) -> PeakFlops | None:
    """The peak FLOP/s of ``device`` for a run in ``precision`` whose matmuls compute in
    ``matmul_format`` (default: as ``precision`` says; float8 training's layers say
    otherwise); None where unknown."""
    fmt = matmul_format or number_format(precision)
    if device.type == "cuda":
        return gpu_peak(
            torch.cuda.get_device_name(device),
            precision,
            torch.get_float32_matmul_precision(),
            matmul_format,
        )
    if device.type == "xla":
        from lightning_accel.xla import runtime

        kind = runtime.device_kind()
        if kind.startswith("TPU"):
            return tpu_peak(kind)
        return measured_cpu_peak(_cpu_dtype(fmt)) if kind == "CPU" else None
    if device.type == "cpu":
        return measured_cpu_peak(_cpu_dtype(fmt))
    return None


def _cpu_dtype(fmt: str) -> torch.dtype:
    formats = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    return formats.get(fmt, torch.float32)


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work: CUDA, XLA, MPS and XPU devices
    run it asynchronously; the CPU has finished when the call returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xla":
        xla_runtime.wait()
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def synchronized_time(device: torch.device) -> float:
    """The wall clock once ``device`` has finished its queued work."""
    synchronize(device)
    return time.perf_counter()
