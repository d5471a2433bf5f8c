"""``lightning-accel doctor``: what this machine has, which hardware profiles run here, what
``auto`` picks, and the command that fixes each problem found.

Gathering facts (:mod:`lightning_accel.machine`) and judging them (:func:`diagnose`, pure)
are separate, so that tests judge made-up machines with the rules a run uses.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightning_accel.cli.compose import compose_job, config_dir_override, value_error
from lightning_accel.cli.config_sources import set_in_job_file
from lightning_accel.cli.console import fail
from lightning_accel.cli.trace_report import report_traces
from lightning_accel.config import HardwareConfig, OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.files import required_path
from lightning_accel.hardware import auto_accelerator
from lightning_accel.machine import MachineFacts, gather
from lightning_accel.plan.run import plan_run
from lightning_accel.precision import float8_unavailable
from lightning_accel.profiles import as_hardware, profile_names
from lightning_accel.xla.runtime import INSTALL as XLA_INSTALL

USAGE = """usage: lightning-accel doctor [--json] [--config-dir DIR] [hardware=NAME[,NAME...]]
       lightning-accel doctor --trace RUN_DIR [--json]

  --json           print one JSON object on stdout instead of tables
  --config-dir DIR judge your project's hardware profiles (DIR/hardware/NAME.yaml) too
  hardware=NAMES   check these hardware profiles: exit 1 if one cannot run here
  --trace RUN_DIR  what the ranks of a failed distributed run were doing: the collective,
                   step and Lightning hook of each, and which ranks did not arrive
"""
CUDA_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cu128"


@dataclass(frozen=True)
class Problem:
    """Something this machine lacks: ``need`` is what it takes away (``cuda``, ``nccl``,
    ``cudnn``, ``torch_xla``, ``tpu``), ``what`` says what is wrong, ``fix`` the command or
    step that fixes it."""

    need: str
    what: str
    fix: str


@dataclass(frozen=True)
class ProfileVerdict:
    """Whether a hardware profile runs here: as what (``cuda x 8, accel_ddp``), or why not and
    the fix."""

    name: str
    runs: bool
    resolved: str | None = None
    reason: str | None = None
    fix: str | None = None

    def why_not(self, separator: str = "; ") -> str:
        """The reason it cannot run, and the fix where the reason does not name it."""
        if not self.fix or self.fix in (self.reason or ""):
            return self.reason or ""
        return f"{self.reason}{separator}fix: {self.fix}"

    def sentence(self) -> str:
        """One sentence for a profile that cannot run here."""
        return f"hardware={self.name} cannot run here: {self.why_not()}."


@dataclass(frozen=True)
class AutoPick:
    """What ``hardware=auto`` and ``precision=auto`` pick here: the accelerator, the devices
    ``devices=auto`` would take, the precision and why; and what ``fp8.enabled=auto`` does
    on that accelerator (``float8``)."""

    accelerator: str
    devices: int
    precision: str
    reason: str
    float8: str = ""


@dataclass(frozen=True)
class Report:
    """Doctor's judgement of a machine: its facts, ``auto``'s picks, a verdict per hardware
    profile and the problems found."""

    facts: MachineFacts
    auto: AutoPick
    profiles: tuple[ProfileVerdict, ...]
    problems: tuple[Problem, ...]

    def verdict(self, name: str) -> ProfileVerdict:
        """The verdict on the profile called ``name``."""
        return next(verdict for verdict in self.profiles if verdict.name == name)

    def as_json(self) -> dict:
        """The report as plain JSON types."""
        data = asdict(self)
        return {**data.pop("facts"), **data}


def _major_minor(version: str) -> str:
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


# the end of the fix for a machine without GPUs; a profile with a twin names its own
CPU_TWINS = "the CPU twins ddp_cpu and fsdp2_cpu"


def cuda_problems(facts: MachineFacts) -> list[Problem]:
    """Why torch sees no GPU, or what its GPUs lack (NCCL, cuDNN)."""
    cuda, torch_version = facts.cuda, facts.versions["torch"]
    problems = [
        Problem(
            "cuda",
            f"torch warned while looking for GPUs: {warning}",
            f"install an NVIDIA driver that supports CUDA {cuda.build} (nvidia-smi shows "
            "the one installed)",
        )
        for warning in cuda.warnings
    ]
    if cuda.devices:
        if not cuda.nccl:
            problems.append(
                Problem("nccl", "NCCL is not available: GPUs cannot communicate", CUDA_TORCH)
            )
        if not cuda.cudnn:
            problems.append(
                Problem("cudnn", "cuDNN is not available: convolutions run slowly", CUDA_TORCH)
            )
        return problems
    if not cuda.pci_gpus and not cuda.driver:
        what = "no NVIDIA GPU on this machine"
        fix = (
            "use a machine with NVIDIA GPUs, their driver and a CUDA build of torch "
            f"({CUDA_TORCH}); here, use {CPU_TWINS}"
        )
    elif cuda.build is None:
        what = f"torch {torch_version} is a CPU-only build, but this machine has NVIDIA GPUs"
        fix = CUDA_TORCH
    elif cuda.driver is None:
        what = f"{cuda.pci_gpus} NVIDIA GPU(s) on the PCI bus, but no NVIDIA driver is loaded"
        fix = f"install the NVIDIA driver for CUDA {cuda.build}; nvidia-smi then lists the GPUs"
    else:
        what = f"NVIDIA driver {cuda.driver} is loaded, but torch sees no GPU"
        fix = f"check CUDA_VISIBLE_DEVICES and that nvidia-smi lists GPUs for CUDA {cuda.build}"
    return [*problems, Problem("cuda", what, fix)]


def xla_problems(facts: MachineFacts) -> list[Problem]:
    """torch_xla missing or mismatched, and TPUs missing."""
    xla_version, torch_version = facts.versions["torch_xla"], facts.versions["torch"] or ""
    if not facts.xla.installed:
        return [Problem("torch_xla", "torch_xla is not installed", XLA_INSTALL)]
    problems = []
    if xla_version and _major_minor(xla_version) != _major_minor(torch_version):
        wanted = _major_minor(xla_version)
        problems.append(
            Problem(
                "torch_xla",
                f"torch_xla {xla_version} needs torch {wanted}, but torch {torch_version} "
                "is installed",
                f"pip install 'torch=={wanted}.*'",
            )
        )
    if not facts.xla.tpu_chips:
        problems.append(
            Problem(
                "tpu",
                "no TPU chips found",
                "use a Cloud TPU VM; here, xla_cpu and xla_cpu_spmd run the same XLA code path",
            )
        )
    return problems


def find_problems(facts: MachineFacts) -> list[Problem]:
    """Everything this machine lacks for some profile, each with its fix."""
    return cuda_problems(facts) + xla_problems(facts)


def needs(profile: HardwareConfig, accelerator: str) -> set[str]:
    """What a profile on ``accelerator`` needs beyond devices (see :class:`Problem`)."""
    if accelerator in ("cuda", "gpu"):
        distributed = profile.strategy != "auto" or profile.devices != 1
        return {"cuda", "nccl"} if distributed else {"cuda"}
    if accelerator == "tpu":
        return {"torch_xla", "tpu"}
    if accelerator == "pjrt":
        return {"torch_xla", {"TPU": "tpu", "CUDA": "cuda"}.get(profile.pjrt_device, "torch_xla")}
    return set()


def judge_profile(
    name: str,
    facts: MachineFacts,
    problems: list[Problem],
    profile: HardwareConfig | None = None,
) -> ProfileVerdict:
    """Whether the hardware profile ``name`` (``profile``, where it is not one of the
    pack's) can run on the machine ``facts`` describe."""
    profile = profile or as_hardware(name)
    accelerator = auto_accelerator(facts) if profile.accelerator == "auto" else profile.accelerator
    blocking = [problem for problem in problems if problem.need in needs(profile, accelerator)]
    fix = blocking[0].fix if blocking else None
    twin = f"{name}_cpu"
    if fix is not None and fix.endswith(CPU_TWINS) and twin in profile_names("hardware"):
        fix = fix.removesuffix(CPU_TWINS) + f"its CPU twin {twin}"
    try:
        plan = plan_run(profile, OptimizationConfig(), facts)
    except ConfigError as error:
        reason = str(ConfigError(error.key, error.value, error.problem)).rstrip(".")
        return ProfileVerdict(name, False, reason=reason, fix=fix)
    if blocking:
        return ProfileVerdict(name, False, reason=blocking[0].what, fix=fix)
    described = f"{plan.accelerator} x {plan.devices}, strategy {plan.strategy}"
    return ProfileVerdict(name, True, resolved=described)


def _float8_here(accelerator: str, facts: MachineFacts) -> str:
    """What ``optimization.fp8.enabled=auto`` does on ``accelerator`` of ``facts``."""
    missing = float8_unavailable(accelerator, machine=facts)
    if missing:
        return f"off without a trial: float8 {missing}"
    return "timed against bf16 where the layers are wide enough: the device has float8 tensor cores"


def diagnose(
    facts: MachineFacts, project_profiles: Mapping[str, HardwareConfig] | None = None
) -> Report:
    """Judge ``facts``: ``auto``'s picks, every hardware profile (the pack's, then a
    project's ``project_profiles``, composed as a run composes them), and the problems
    found."""
    problems = find_problems(facts)
    plan = plan_run(HardwareConfig(devices="auto"), OptimizationConfig(precision="auto"), facts)
    auto = AutoPick(
        accelerator=plan.accelerator,
        devices=plan.devices,
        precision=plan.precision.precision,
        reason=plan.precision.reason,
        float8=_float8_here(plan.accelerator, facts),
    )
    project = dict(project_profiles or {})
    pack = [name for name in profile_names("hardware") if name not in project]
    verdicts = tuple(judge_profile(name, facts, problems) for name in pack) + tuple(
        judge_profile(name, facts, problems, profile) for name, profile in project.items()
    )
    return Report(facts=facts, auto=auto, profiles=verdicts, problems=tuple(problems))


def _machine_rows(facts: MachineFacts) -> list[tuple[str, str]]:
    versions = ", ".join(f"{name} {version or '-'}" for name, version in facts.versions.items())
    cpu = facts.cpu
    cuda = facts.cuda
    gpus = [
        f"{d.index}: {d.name} (sm_{d.capability[0]}{d.capability[1]}, {d.memory_gib} GiB)"
        for d in cuda.devices
    ]
    xla = facts.xla
    tpus = (
        f"{xla.tpu_chips} chip(s), {xla.tpu_devices} device(s)"
        if xla.installed
        else "unknown (torch_xla is not installed)"
    )
    cluster = facts.cluster
    details = ", ".join(f"{key}={value}" for key, value in cluster.details.items())
    return [
        ("versions", versions),
        (
            "CPU",
            f"{cpu.model}, {cpu.cores} cores; flags: {', '.join(cpu.features) or 'none of note'};"
            f" torch kernels: {cpu.torch_capability}",
        ),
        ("CUDA build", f"{cuda.build or 'none (CPU-only torch)'}; driver {cuda.driver or '-'}"),
        ("GPUs", "\n".join(gpus) or "none"),
        ("cuDNN / NCCL", f"{cuda.cudnn or '-'} / {cuda.nccl or '-'}"),
        ("TPU", f"{tpus}; PJRT_DEVICE={xla.pjrt_device or '(unset)'}"),
        ("cluster", f"{cluster.kind}" + (f" ({details})" if details else "")),
    ]


def render(report: Report, console: Console) -> None:
    """Print ``report`` as tables for people."""
    machine = Table(title="This machine", show_header=False, title_justify="left")
    for key, value in _machine_rows(report.facts):
        machine.add_row(key, escape(value))
    auto = report.auto
    machine.add_row(
        "auto picks",
        escape(
            f"hardware={auto.accelerator} ({auto.devices} with devices=auto), "
            f"precision={auto.precision} ({auto.reason})"
        ),
    )
    machine.add_row("fp8 auto", escape(auto.float8))
    console.print(machine)
    profiles = Table(title="Hardware profiles", title_justify="left")
    for column in ("profile", "runs here", "as / why not"):
        profiles.add_column(column)
    for verdict in report.profiles:
        detail = verdict.resolved if verdict.runs else verdict.why_not("\n")
        profiles.add_row(
            verdict.name, "yes" if verdict.runs else "[red]no[/]", escape(detail or "")
        )
    console.print(profiles)
    if report.problems:
        console.print("Problems and their fixes:")
    for problem in report.problems:
        console.print(escape(f"  - {problem.what}\n    fix: {problem.fix}"), soft_wrap=True)


@dataclass(frozen=True)
class DoctorArguments:
    """What ``doctor`` was asked: ``as_json`` output, the hardware profile ``names`` to
    check, a run directory to ``trace``, and a project's hardware profiles by name (from
    ``--config-dir``)."""

    as_json: bool = False
    names: tuple[str, ...] = ()
    trace: Path | None = None
    project_profiles: Mapping[str, HardwareConfig] = field(default_factory=dict)


def project_hardware(directory: str) -> dict[str, HardwareConfig]:
    """The hardware profiles of a project's config directory (``DIR/hardware/NAME.yaml``),
    each composed as ``train --config-dir DIR hardware=NAME`` composes it (a profile may
    extend one of the pack's by its defaults list)."""
    search_path = config_dir_override(directory)
    files = sorted((Path(directory).expanduser() / "hardware").glob("*.yaml"))
    profiles = {}
    for name in (path.stem for path in files):
        cfg = compose_job([search_path, f"hardware={name}"])
        try:
            profiles[name] = OmegaConf.to_object(cfg.hardware)
        except OmegaConfBaseException as error:
            raise set_in_job_file(value_error(error, [f"hardware={name}"]), cfg) from error
        except ConfigError as error:  # a value the profile's own checks refuse
            raise set_in_job_file(error, cfg) from error
    return profiles


def _next_value(arguments: Iterator[str], option: str, needed: str) -> str:
    given = next(arguments, None)
    if given is None:
        raise ConfigError("doctor", option, f"needs {needed} after it")
    return str(required_path(option, given, needed))


def parse(args: list[str]) -> DoctorArguments:
    """What ``args`` ask (each hardware profile named checked to exist).

    Raises:
        ConfigError: an unknown argument or hardware profile, ``--trace`` without a
            directory, or a ``--config-dir`` that is none or holds an invalid profile.
    """
    as_json, names, trace, config_dir = False, [], None, None
    arguments = iter(args)
    for arg in arguments:
        if arg == "--json":
            as_json = True
        elif arg == "--trace":
            trace = Path(_next_value(arguments, arg, "a run directory"))
        elif arg in ("--config-dir", "-cd"):
            config_dir = _next_value(arguments, arg, "a config directory")
        elif arg.startswith("hardware="):
            names += [name.strip() for name in arg.partition("=")[2].split(",")]
        else:
            choices = ["--json", "--config-dir DIR", "hardware=NAME", "--trace RUN_DIR"]
            raise ConfigError("doctor", arg, "is not an argument", choices)
    project = project_hardware(config_dir) if config_dir is not None else {}
    for name in names:
        if name not in project:
            try:
                as_hardware(name)
            except ConfigError as error:
                known = sorted({*profile_names("hardware"), *project})
                raise ConfigError("hardware", name, error.problem, known) from None
    return DoctorArguments(as_json, tuple(names), trace, project)


def main(args: list[str]) -> int:
    """Run ``lightning-accel doctor`` with the arguments after the verb; returns the exit
    code (1 when a profile asked about cannot run here)."""
    if any(arg in ("-h", "--help") for arg in args):
        print(USAGE, end="")
        return 0
    try:
        asked = parse(args)
        if asked.trace is not None:
            report_traces(asked.trace, asked.as_json)
            return 0
    except ConfigError as error:
        fail(error)
    report = diagnose(gather(), asked.project_profiles)
    if asked.as_json:
        print(json.dumps({**report.as_json(), "checked": list(asked.names)}, indent=2))
    else:
        render(report, Console(file=sys.stdout, highlight=False))
    refused = [report.verdict(name) for name in asked.names if not report.verdict(name).runs]
    if refused:
        fail(" ".join(verdict.sentence() for verdict in refused), exit_code=1)
    return 0
