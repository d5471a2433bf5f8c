"""What a machine has, behind one :class:`Machine` protocol: :data:`THIS_MACHINE` asks the
machine this process runs on, lazily and only what a rule needs; :class:`MachineFacts`
answers from facts gathered once (versions, CUDA devices, TPU chips, CPU features, the
cluster environment) or made up by a test. Nothing here judges them: the run's own rules
(``hardware.resolve_hardware``, ``precision.auto_precision``, the run plan) do, whichever
machine they are given."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import re
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from lightning_accel.config import HardwareConfig
from lightning_accel.xla import runtime as xla_runtime

# Distributions whose versions doctor reports (Python's and torch's come from themselves).
PACKAGES = {
    "lightning": "lightning",
    "torch_xla": "torch_xla",
    "hydra": "hydra-core",
    "lightning_accel": "lightning-accel",
}
# CPU flags that decide how fast training runs on the CPU (x86 names from /proc/cpuinfo).
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")
CPUINFO = Path("/proc/cpuinfo")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
PCI_DEVICES = Path("/sys/bus/pci/devices")
NVIDIA_PCI_VENDOR = "0x10de"


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
MEMINFO = Path("/proc/meminfo")
CGROUP_MEMORY = Path("/sys/fs/cgroup")


class Machine(Protocol):
    """Every question the pack's rules ask of a machine."""

    def cuda_devices(self) -> int:
        """CUDA devices torch can use."""
        ...

    def tpu_available(self) -> bool:
        """Whether ``auto`` may pick a TPU: torch_xla, a TPU, and ``PJRT_DEVICE`` unset or TPU."""
        ...

    def devices_for(self, accelerator: str, profile: HardwareConfig) -> int:
        """Devices of ``accelerator`` that ``profile`` can use (``pjrt``: of its PJRT device).

        Raises:
            ConfigError: ``pjrt`` without torch_xla.
        """
        ...

    def cpu_bf16_units(self) -> str | None:
        """The CPU's bf16 matrix instruction set, if any."""
        ...

    def cuda_capability(self) -> tuple[int, int] | None:
        """The first CUDA device's compute capability, if there is one."""
        ...

    def pjrt_device(self) -> str:
        """The PJRT device type in use (``TPU``, ``CUDA``, ``CPU``, or empty)."""
        ...

    def cpu_cores(self) -> int:
        """Cores of the CPU this process may run on."""
        ...

    def memory_bytes(self, accelerator: str) -> int | None:
        """Memory one run can take on ``accelerator``: host memory free now (``cpu``, shared
        by its ranks), or one device's (``cuda``); None where unknown."""
        ...


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags, from the first ``flags`` (x86) or ``Features`` (Arm) line of
    ``cpuinfo``; empty where the file is absent."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_units(flags: Collection[str]) -> str | None:
    """The bf16 matrix instruction set (``amx_bf16``, ``avx512_bf16``) among ``flags``."""
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def cuda_device_count() -> int:
    """Number of CUDA devices torch can use (0 on a CPU-only build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torch_xla_installed() -> bool:
    """Whether torch_xla can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch_xla") is not None


def available_devices(accelerator: str) -> int:
    """How many devices of ``accelerator`` this machine offers (``devices=auto`` takes all)."""
    if accelerator in ("cuda", "gpu"):
        return cuda_device_count()
    if accelerator == "cpu":
        return usable_cores()
    if accelerator == "tpu":
        from lightning.pytorch.accelerators import XLAAccelerator

        return XLAAccelerator.auto_device_count() if XLAAccelerator.is_available() else 0
    if accelerator == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    if accelerator == "pjrt":
        return xla_runtime.device_count()
    return 0


# cgroup v2's CPU bandwidth limit of this process's container: "QUOTA PERIOD" or "max PERIOD"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """The cores a cgroup CPU quota allows (rounded up), None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Processor cores this process may run on: its CPU affinity (``taskset``, SLURM's
    cpusets), capped by a container's cgroup CPU quota."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def configure_pjrt(profile: HardwareConfig) -> None:
    """Point torch_xla at the profile's PJRT device type (before torch_xla starts): ``CPU``
    gets as many virtual devices as the profile asks for."""
    xla_runtime.require("hardware.accelerator", profile.accelerator)
    os.environ["PJRT_DEVICE"] = profile.pjrt_device
    if profile.pjrt_device == "CPU" and profile.devices != "auto":
        os.environ["CPU_NUM_DEVICES"] = str(profile.devices)


def host_memory_available(meminfo: Path = MEMINFO, cgroup: Path = CGROUP_MEMORY) -> int:
    """Bytes of host memory a new process can take: the kernel's ``MemAvailable``, capped
    by this process's cgroup limit (``memory.max`` less ``memory.current``) where one is set."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if meminfo.is_file():
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        available = int(match.group(1)) * 1024 if match else available
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else min(available, int(limit) - used)


class LiveMachine:
    """The machine this process runs on (see :class:`Machine`), asked lazily: only what a
    rule needs, when it needs it. ``devices_for`` points torch_xla at a ``pjrt`` profile's
    device type first."""

    def cuda_devices(self) -> int:
        return cuda_device_count()

    def tpu_available(self) -> bool:
        if not torch_xla_installed() or os.environ.get("PJRT_DEVICE", "TPU").upper() != "TPU":
            return False
        from lightning.pytorch.accelerators import XLAAccelerator

        return XLAAccelerator.is_available()

    def devices_for(self, accelerator: str, profile: HardwareConfig) -> int:
        if accelerator == "pjrt":
            configure_pjrt(profile)
        return available_devices(accelerator)

    def cpu_bf16_units(self) -> str | None:
        return bf16_units(cpu_flags())

    def cuda_capability(self) -> tuple[int, int] | None:
        return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None

    def pjrt_device(self) -> str:
        return xla_runtime.pjrt_device()

    def cpu_cores(self) -> int:
        return usable_cores()

    def memory_bytes(self, accelerator: str) -> int | None:
        if accelerator == "cpu":
            return host_memory_available()
        if accelerator == "cuda" and torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory
        return None


THIS_MACHINE = LiveMachine()


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device: its index, name, compute capability and memory."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float


@dataclass(frozen=True)
class CudaFacts:
    """What torch sees of NVIDIA hardware: the CUDA version torch was built for (``None``
    for a CPU-only build), the kernel driver's version, the NVIDIA GPUs on the PCI bus
    (found without a driver), the devices torch can use, the cuDNN and NCCL
    versions (``None`` where absent), and what torch warned while looking (an old driver)."""

    build: str | None = None
    driver: str | None = None
    pci_gpus: int = 0
    devices: tuple[CudaDevice, ...] = ()
    cudnn: str | None = None
    nccl: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class XlaFacts:
    """torch_xla and TPUs: whether torch_xla is installed, the ``PJRT_DEVICE`` the
    environment sets (empty if unset), and the TPU chips and devices found without starting
    the runtime (``None`` where torch_xla, which finds them, is absent)."""

    installed: bool = False
    pjrt_device: str = ""
    tpu_chips: int | None = None
    tpu_devices: int | None = None


@dataclass(frozen=True)
class CpuFacts:
    """The CPU: model name, logical cores, the training-relevant flags it has (of
    :data:`CPU_FEATURES`) and the vector instruction set torch's kernels use."""

    model: str = "unknown"
    cores: int = 1
    features: tuple[str, ...] = ()
    torch_capability: str = "unknown"


@dataclass(frozen=True)
class ClusterFacts:
    """The cluster environment Lightning will detect: ``slurm``, ``torchrun`` or ``none``,
    with the variables that describe the job."""

    kind: str = "none"
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineFacts:
    """Everything doctor knows about a machine (see :func:`gather`; tests build one by hand).

    It answers the questions of :class:`Machine` from these facts, so a judgement about a
    faked machine is the judgement a run on that machine would make.
    """

    versions: dict[str, str | None]
    cpu: CpuFacts = field(default_factory=CpuFacts)
    cuda: CudaFacts = field(default_factory=CudaFacts)
    xla: XlaFacts = field(default_factory=XlaFacts)
    cluster: ClusterFacts = field(default_factory=ClusterFacts)
    mps: bool = False
    host_memory: int | None = None

    def cuda_devices(self) -> int:
        """CUDA devices torch can use."""
        return len(self.cuda.devices)

    def tpu_available(self) -> bool:
        """Whether ``auto`` may pick a TPU."""
        return (
            self.xla.installed
            and self.xla.pjrt_device in ("", "TPU")
            and bool(self.xla.tpu_devices)
        )

    def devices_for(self, accelerator: str, profile: HardwareConfig) -> int:
        """Devices of ``accelerator`` that ``profile`` can use, as :class:`LiveMachine`
        counts them once :func:`configure_pjrt` has set a ``pjrt`` profile's device type.

        Raises:
            ConfigError: ``pjrt`` without torch_xla.
        """
        if accelerator == "pjrt":
            xla_runtime.require("hardware.accelerator", profile.accelerator, self.xla.installed)
            accelerator = profile.pjrt_device.lower()
            if accelerator == "cpu":  # virtual devices: as many as the profile asks for
                return 1 if profile.devices == "auto" else int(profile.devices)
        counts = {
            "cuda": self.cuda_devices(),
            "gpu": self.cuda_devices(),
            "cpu": self.cpu.cores,
            "tpu": (self.xla.tpu_devices or 0) if self.xla.installed else 0,
            "mps": int(self.mps),
        }
        return counts.get(accelerator, 0)

    def cpu_bf16_units(self) -> str | None:
        """The CPU's bf16 matrix instruction set, if any."""
        return bf16_units(self.cpu.features)

    def cuda_capability(self) -> tuple[int, int] | None:
        """The first CUDA device's compute capability, if there is one."""
        return self.cuda.devices[0].capability if self.cuda.devices else None

    def pjrt_device(self) -> str:
        """The PJRT device type the environment sets."""
        return self.xla.pjrt_device

    def cpu_cores(self) -> int:
        """Cores of the CPU."""
        return self.cpu.cores

    def memory_bytes(self, accelerator: str) -> int | None:
        """Host memory free (``cpu``) or the first CUDA device's memory (``cuda``)."""
        if accelerator == "cpu":
            return self.host_memory
        if accelerator == "cuda" and self.cuda.devices:
            return int(self.cuda.devices[0].memory_gib * 2**30)
        return None


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def gather_versions() -> dict[str, str | None]:
    """Python's, torch's and :data:`PACKAGES`' versions (``None``: not installed)."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    versions.update({name: package_version(dist) for name, dist in PACKAGES.items()})
    return versions


def nvidia_pci_gpus(pci_devices: Path = PCI_DEVICES) -> int:
    """NVIDIA display and 3D controllers on the PCI bus (PCI class 0x03), driver or not."""
    count = 0
    for device in pci_devices.glob("*") if pci_devices.is_dir() else ():
        try:
            vendor = (device / "vendor").read_text().strip()
            kind = (device / "class").read_text().strip()
        except OSError:
            continue
        count += vendor == NVIDIA_PCI_VENDOR and kind.startswith("0x03")
    return count


def cudnn_version(number: int) -> str:
    """cuDNN's version number as text: 91002 is 9.10.2 (cuDNN 9 on), 8907 is 8.9.7."""
    if number >= 90000:
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"


def gather_cuda() -> CudaFacts:
    """CUDA devices, driver, cuDNN and NCCL as torch sees them."""
    devices: tuple[CudaDevice, ...] = ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        devices = tuple(
            CudaDevice(
                index=i,
                name=torch.cuda.get_device_name(i),
                capability=tuple(torch.cuda.get_device_capability(i)),  # type: ignore[arg-type]
                memory_gib=round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            )
            for i in range(torch.cuda.device_count())
        )
    nccl = None
    if devices and torch.distributed.is_available() and torch.distributed.is_nccl_available():
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    driver = None
    if NVIDIA_DRIVER.exists():
        match = re.search(r"Kernel Module\s+(\S+)", NVIDIA_DRIVER.read_text())
        driver = match.group(1) if match else "unknown"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return CudaFacts(
        build=torch.version.cuda,
        driver=driver,
        pci_gpus=nvidia_pci_gpus(),
        devices=devices,
        cudnn=None if cudnn is None else cudnn_version(cudnn),
        nccl=nccl,
        warnings=tuple(str(warning.message).strip() for warning in caught),
    )


def gather_xla() -> XlaFacts:
    """torch_xla and the TPU chips it finds (without starting its runtime)."""
    # Read before torch_xla is imported: its import sets PJRT_DEVICE=CPU where it is unset
    # (logging that it did so, which says nothing about this machine).
    pjrt_device = xla_runtime.pjrt_device()
    if not xla_runtime.installed():
        return XlaFacts(installed=False, pjrt_device=pjrt_device)
    logging.disable(logging.WARNING)
    try:
        chips = xla_runtime.tpu_chips()
        devices = xla_runtime.tpu_devices()
    except OSError:
        # Chips whose metadata cannot be read: one device each, as on every TPU since v4.
        devices = chips
    finally:
        logging.disable(logging.NOTSET)
    return XlaFacts(installed=True, pjrt_device=pjrt_device, tpu_chips=chips, tpu_devices=devices)


def gather_cpu(cpuinfo: Path = CPUINFO) -> CpuFacts:
    """The CPU's model, cores and training-relevant flags (from ``cpuinfo``)."""
    flags = cpu_flags(cpuinfo)
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    model = next(
        (
            line.partition(":")[2].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return CpuFacts(
        model=model,
        cores=os.cpu_count() or 1,
        features=tuple(flag for flag in CPU_FEATURES if flag in flags),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
    )


SLURM_DETAILS = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_PROCID")
TORCHRUN_DETAILS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


def gather_cluster() -> ClusterFacts:
    """The cluster environment, by Lightning's rules and in its order: SLURM when
    ``SLURM_NTASKS`` is set and the job is not an interactive one (``bash``,
    ``interactive``), then torchrun when ``TORCHELASTIC_RUN_ID`` is set. Read from the
    environment, so that doctor need not import Lightning (seconds)."""
    env = os.environ
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return ClusterFacts("slurm", {key: env[key] for key in SLURM_DETAILS if key in env})
    if "TORCHELASTIC_RUN_ID" in env:
        return ClusterFacts("torchrun", {key: env[key] for key in TORCHRUN_DETAILS if key in env})
    return ClusterFacts()


def gather(cpuinfo: Path = CPUINFO) -> MachineFacts:
    """The facts of this machine; starts no runtime and spawns nothing."""
    return MachineFacts(
        versions=gather_versions(),
        cpu=gather_cpu(cpuinfo),
        cuda=gather_cuda(),
        xla=gather_xla(),
        cluster=gather_cluster(),
        mps=torch.backends.mps.is_available(),
        host_memory=host_memory_available(),
    )
