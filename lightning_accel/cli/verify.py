"""``lightning-accel verify``: run and record every CUDA path of the pack on this machine's
GPUs, one named check (a cell) after another, or with ``--dry-run`` the same cells on their
CPU twins, so that the code that checks a GPU runs wherever the tests run.

The runs go through the runner in processes of their own, as ``bench`` runs its cells
(:func:`lightning_accel.cli.bench.run_cell`); the precision rules, the consolidation of a
sharded checkpoint and a plain PyTorch loop of the same model run in this process. The
results go to ``<device>.json`` and ``<device>.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from lightning_accel.cli import bench
from lightning_accel.cli.collective_probe import PROBE_VALUE
from lightning_accel.cli.console import fail, print_table, quiet_upstream, say
from lightning_accel.cli.verb_options import VerbOptions, directory_path, require_seconds
from lightning_accel.errors import ConfigError
from lightning_accel.files import check_writable, write_text_whole

USAGE = """usage: lightning-accel verify [--dry-run] [--out DIR] [--work DIR] [--cell-timeout S]
                              [--deadline S] [--only WORDS]

Runs and records every CUDA path of the pack on this machine's GPUs, one check (a cell)
after another: an NCCL all-reduce, hardware=auto, DDP and FSDP2 on one GPU (and on all of
them, against one, where there are several), FSDP2 with CPU offload, the optimization
profiles on the GPT recipe at 12 layers x 768 and on the image recipe with channels_last,
the precision rules, a sharded checkpoint saved, resumed and consolidated, MFU against the
datasheet peak, and the speed of a plain PyTorch loop of the same model in fp32 and bf16.

--dry-run runs each cell's CPU twin instead (cpu, ddp_cpu, fsdp2_cpu over gloo; a tiny
model, 4 steps), so the same code runs on a machine without a GPU. The figures go to
DIR/<device>.json and DIR/<device>.md (DIR: default docs/results/devices), rewritten as
each cell ends; the runs themselves to --work (default runs/verify/<time>). A run longer
than --cell-timeout seconds (default 180) is stopped and fails its cell. Past --deadline
seconds from the start (default: none) no cell starts and a run still going is stopped;
the cells left are recorded as not run. --only WORD[,WORD...] runs the cells whose names
hold one of the words (any case), and the cells they need: a rerun on a short loan.
Exit code 0: every cell passed; 1: one or more failed or did not run; 2: no CUDA GPU and
no --dry-run, or a word no cell has.

  lightning-accel verify --dry-run --out /tmp/verify
"""

DEFAULT_OUT = Path("docs/results/devices")
# Seconds after which a cell's run is stopped (the GPU runs take well under a minute each):
# a hung run fails its cell instead of the whole device check's time.
CELL_TIMEOUT = 180.0
# Seconds the collective probe may take: NCCL starts in seconds, or hangs.
PROBE_TIMEOUT = 60.0
# The CPU twin of each GPU hardware profile a cell runs.
TWINS = {"auto": "cpu", "ddp": "ddp_cpu", "fsdp2": "fsdp2_cpu"}
REPORT = "lightning_accel.callbacks.DeviceReport"
# The optimization profiles the GPT recipe runs with (those this checkout has).
OPTIMIZATION_PROFILES = ("default", "fast", "memory", "auto")


class CheckFailed(Exception):
    """A cell found something other than what it checks for (the message says what)."""


@dataclass(frozen=True)
class Setting:
    """How the cells run: GPU-sized on the GPUs, or a tiny model on the CPU twins.

    Attributes:
        dry_run: run the CPU twins of the GPU profiles.
        gpus: CUDA devices of this machine (0 in a dry run).
        model: the GPT's shape (``n_layer``, ``d_model``, ``n_head``).
        seq_len: tokens per sample.
        batch_size: samples per step of a one-device run; the global batch of parity runs.
        steps: optimizer steps of each run.
        warmup_steps: leading steps left out of the speed figures.
        log_every_n_steps: the logging interval (the steps whose losses parity compares).
        parity_tolerance: the largest loss difference a parity cell accepts.
        measured_profiles: overrides of the cells whose profile measures its choices
            (``fast``, ``auto``): the dry run leaves compile off, whose timing would take
            longer than all the other cells on a small CPU (the precision is still measured).
        compile_backend: the backend of the compiled runs (``fast`` compiled, and the
            compiled plain loop): inductor, or in the dry run aot_eager (torch.compile's path
            without inductor's minutes of code generation on a small CPU).
    """

    dry_run: bool
    gpus: int
    model: dict[str, int]
    seq_len: int
    batch_size: int
    steps: int
    warmup_steps: int
    log_every_n_steps: int
    parity_tolerance: float
    measured_profiles: tuple[str, ...] = ()
    compile_backend: str = "inductor"

    @property
    def device_type(self) -> str:
        """Where the cells compute: ``cpu`` or ``cuda``."""
        return "cpu" if self.dry_run else "cuda"

    @property
    def backend(self) -> str:
        """The process group backend the parallel cells train over: NCCL, or gloo."""
        return "gloo" if self.dry_run else "nccl"

    @property
    def parallel_ranks(self) -> int:
        """Ranks of the parity cells: every GPU, or two CPU processes."""
        return 2 if self.dry_run else self.gpus

    def hardware(self, profile: str) -> str:
        """The hardware profile a cell of GPU profile ``profile`` runs."""
        return TWINS[profile] if self.dry_run else profile

    def loop(self, steps: int | None = None) -> list[str]:
        """The overrides every run takes: its length, logging and the device report."""
        return [
            f"trainer.max_steps={steps or self.steps}",
            f"trainer.log_every_n_steps={self.log_every_n_steps}",
            "trainer.num_sanity_val_steps=0",
            f"callbacks.speed.warmup_steps={self.warmup_steps}",
            f"callbacks.extra=[{{_target_: {REPORT}}}]",
        ]

    def gpt(self, batch_size: int | None = None, steps: int | None = None) -> list[str]:
        """The overrides of a GPT run: the model's shape, its batch, one validation at the
        end (which saves the checkpoint) and :meth:`loop`."""
        return [
            "recipe=gpt",
            *(f"model.{key}={value}" for key, value in self.model.items()),
            f"data.seq_len={self.seq_len}",
            f"data.batch_size={batch_size or self.batch_size}",
            f"trainer.val_check_interval={self.steps}",
            "trainer.limit_val_batches=2",
            # the best checkpoint alone: at GPT-2 small's shape each is 1 GB of a GPU
            # machine's small disk, and the one save is what the cells check
            "callbacks.checkpoint.save_last=false",
            *self.loop(steps),
        ]


DRY_RUN = Setting(
    dry_run=True,
    gpus=0,
    model={"n_layer": 2, "d_model": 32, "n_head": 2},
    seq_len=32,
    batch_size=8,
    steps=4,
    warmup_steps=1,
    log_every_n_steps=1,
    parity_tolerance=1e-5,
    measured_profiles=("optimization.compile.enabled=false",),
    compile_backend="aot_eager",
)


def gpu_setting(gpus: int) -> Setting:
    """The setting on ``gpus`` CUDA devices: GPT-2 small's shape (12 layers x 768) at 1,024
    tokens, enough steps to time after the warm-up."""
    return Setting(
        dry_run=False,
        gpus=gpus,
        model={"n_layer": 12, "d_model": 768, "n_head": 12},
        seq_len=1024,
        batch_size=8,
        steps=25,
        warmup_steps=8,
        log_every_n_steps=5,
        parity_tolerance=1e-4,
    )


@dataclass
class Cell:
    """One named check and what it found.

    Attributes:
        name: the cell's name, the first column of the tables.
        checks: what the cell checks, in words.
        run: the check: returns the cell's figures, raises on a failure.
        needs: the cells whose results it reads; it fails when one of them failed.
        started: whether it began (the cells left at the deadline never do).
        passed: whether every check held.
        error: the last line of what failed it or kept it from running (None when it
            passed).
        seconds: its wall time.
        figures: what it measured and found.
        overrides: the runner overrides of its run (empty for a cell run in this process).
        run_dir: its run's directory (None for a cell run in this process).
    """

    name: str
    checks: str
    run: Callable[[Verification, Cell], dict[str, Any]]
    needs: tuple[str, ...] = ()
    started: bool = False
    passed: bool = False
    error: str | None = None
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def status(self) -> str:
        """``passed``, ``failed`` or ``not run``."""
        if not self.started:
            return "not run"
        return "passed" if self.passed else "failed"

    def record(self) -> dict[str, Any]:
        """The cell as the JSON file holds it."""
        return {
            "name": self.name,
            "checks": self.checks,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 2),
            "figures": self.figures,
            "overrides": self.overrides,
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }


def expect(condition: bool, message: str) -> None:
    """Fail the cell with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


@dataclass
class Verification:
    """The cells of one machine and the place their runs go.

    Attributes:
        setting: how the cells run.
        work: the directory of the runs.
        cell_timeout: seconds after which a run is stopped (None: no limit).
        deadline: the ``time.perf_counter()`` after which no cell starts and no run goes
            on (None: none).
        cells: the cells, by name, in the order they run.
    """

    setting: Setting
    work: Path
    cell_timeout: float | None = None
    deadline: float | None = None
    cells: dict[str, Cell] = field(default_factory=dict)

    def seconds_left(self) -> float | None:
        """How long a run that starts now may take: the cell timeout, or less where the
        deadline comes first (None: no limit)."""
        limits = [self.cell_timeout] if self.cell_timeout is not None else []
        if self.deadline is not None:
            limits.append(max(self.deadline - time.perf_counter(), 1.0))
        return min(limits) if limits else None

    def result(self, name: str) -> Cell:
        """A cell this one needs (it ran before, and passed)."""
        return self.cells[name]

    def train(self, cell: Cell, overrides: list[str]) -> dict[str, Any]:
        """Train ``overrides`` in a process of its own, as ``bench`` runs a cell; its
        summary, with the checks every run gets (the steps made, the device used, a
        throughput and an MFU wherever the device's peak is known)."""
        cell.overrides = overrides
        cell.run_dir = self.work / re.sub(r"[^A-Za-z0-9_.-]+", "-", cell.name).strip("-")
        run = bench.Cell(label=cell.name, overrides=overrides)
        summary = bench.run_cell(run, cell.run_dir, self.seconds_left())
        if summary is None:
            raise CheckFailed(run.error)
        figures = run_figures(summary)
        expect(figures["steps"] > 0, "it made no step")
        device = str(summary.get("device", ""))
        expect(
            device.startswith(self.setting.device_type),
            f"it ran on {device or 'an unknown device'}, not {self.setting.device_type}",
        )
        expect(bool(figures["samples_per_second"]), "it measured no throughput")
        if summary.get("peak_flops_source"):
            expect(figures["mfu"] is not None, "it knows the peak but reported no MFU")
        cell.figures = figures
        return summary

    def refused(self, cell: Cell, overrides: list[str], sentence: str) -> dict[str, Any]:
        """Check ``overrides`` as the runner does before a run starts (in this process);
        they must be refused with ``sentence`` in the error."""
        from lightning_accel.cli.compose import path_override
        from lightning_accel.cli.preflight import preflight

        cell.overrides = overrides
        run_dir = self.work / re.sub(r"[^A-Za-z0-9_.-]+", "-", cell.name).strip("-")
        try:
            preflight(
                [bench.CELL_CALLBACKS, *overrides, path_override("hydra.run.dir", run_dir)], False
            )
        except ConfigError as error:
            expect(sentence in str(error), f"refused for another reason: {error}")
            return {"refusal": str(error)}
        raise CheckFailed("the runner's checks let it run instead of refusing it")


def run_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures a cell records of a run's summary."""
    step = summary.get("step_seconds")
    return {
        "steps": summary.get("steps"),
        "steps_per_second": round(1 / step, 3) if step else None,
        **bench.cell_figures(summary),
        "flops_per_step": summary.get("flops_per_step"),
        "peak_tflops_per_device": summary.get("peak_tflops_per_device"),
        "peak_flops_source": summary.get("peak_flops_source"),
        "precision": summary.get("precision"),
        "strategy": summary.get("strategy"),
        "world_size": summary.get("world_size"),
        **{
            key: summary.get(key)
            for key in (
                "device",
                "parameters_on",
                "optimizer_state_on",
                "metric_states_on",
                "loss_scaler",
                "channels_last",
            )
        },
    }


def _losses(summary: dict[str, Any]) -> dict[int, float]:
    """The training loss at each logged step of a run (its metrics.csv)."""
    with Path(summary["metrics"]).open() as handle:
        return {
            int(row["step"]): float(row["train/loss"])
            for row in csv.DictReader(handle)
            if row.get("train/loss")
        }


# ---- the cells ----------------------------------------------------------------------------
OFFLOAD = "hardware.strategy_options.cpu_offload=true"
COLLECTIVES = "collectives"
AUTO = "auto · default"
FSDP2_ONE = "fsdp2 · 1 device"
BF16 = "precision · bf16-mixed"
FAST = "optimization=fast"
FAST_COMPILED = "optimization=fast · compiled"
FP8_REFERENCE = "fp8 · float8 off"
# A model wide enough for float8 to pay (on an H200 it broke even at 2,048 features and ran
# 1.22x bf16 at 4,096): the shape the fp8 auto cell times float8 on.
WIDE_MODEL = {"n_layer": 2, "d_model": 4096, "n_head": 32}


def collectives(v: Verification, cell: Cell) -> dict[str, Any]:
    """One all-reduce over the backend the parallel cells train over (NCCL, or gloo on the
    CPU twin), in a process of its own, within :data:`PROBE_TIMEOUT`."""
    backend = v.setting.backend
    command = [sys.executable, "-m", "lightning_accel.cli.collective_probe", backend]
    timeout = min(PROBE_TIMEOUT, v.seconds_left() or PROBE_TIMEOUT)
    try:
        done = subprocess.run(
            [*command, v.setting.device_type], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"a one-rank {backend} all-reduce did not end in {timeout:g} s") from None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    expect(done.returncode == 0, lines[-1] if lines else f"exit code {done.returncode}")
    figures = {"backend": backend, **json.loads(done.stdout.splitlines()[-1])}
    expect(figures["value"] == PROBE_VALUE, f"the all-reduce gave {figures['value']}")
    return figures


def hardware_auto(v: Verification, cell: Cell) -> dict[str, Any]:
    """hardware=auto with optimization=default: the GPU (or the CPU twin), fp32."""
    s = v.setting
    summary = v.train(cell, [f"hardware={s.hardware('auto')}", "optimization=default", *s.gpt()])
    expect(summary["parameters_on"] == [s.device_type], "parameters are not on the device")
    cell.figures["losses"] = _losses(summary)
    return cell.figures


def one_device(profile: str, *extra: str) -> Callable[[Verification, Cell], dict[str, Any]]:
    """A cell that trains hardware ``profile`` on one device."""

    def check(v: Verification, cell: Cell) -> dict[str, Any]:
        s = v.setting
        overrides = [f"hardware={s.hardware(profile)}", "hardware.devices=1", *extra, *s.gpt()]
        summary = v.train(cell, overrides)
        expect(summary["world_size"] == 1, f"world size {summary['world_size']}, not 1")
        if profile == "fsdp2":
            checkpoint = Path(summary["checkpoint"] or "")
            shards = list(checkpoint.glob("*.distcp")) if checkpoint.is_dir() else []
            expect(bool(shards), f"no sharded checkpoint at {checkpoint}")
            cell.figures["checkpoint"] = str(checkpoint)
        return cell.figures

    return check


def cpu_offload(v: Verification, cell: Cell) -> dict[str, Any]:
    """FSDP2 with CPU offload: shards and optimizer state in CPU memory, metric states on
    the device that computes."""
    s = v.setting
    overrides = [f"hardware={s.hardware('fsdp2')}", "hardware.devices=1", OFFLOAD, *s.gpt()]
    summary = v.train(cell, overrides)
    expect(summary["parameters_on"] == ["cpu"], f"shards on {summary['parameters_on']}")
    expect(summary["optimizer_state_on"] == ["cpu"], "optimizer state left CPU memory")
    expect(
        summary["metric_states_on"] == [s.device_type],
        f"metric states on {summary['metric_states_on']}, not {s.device_type}",
    )
    return cell.figures


def parity(profile: str, *extra: str) -> Callable[[Verification, Cell], dict[str, Any]]:
    """A cell that trains ``profile`` (with ``extra`` overrides) on every rank with the
    one-device run's global batch and compares its losses with the one-device run's."""

    def check(v: Verification, cell: Cell) -> dict[str, Any]:
        s = v.setting
        ranks = s.parallel_ranks
        expect(s.batch_size % ranks == 0, f"batch {s.batch_size} does not split over {ranks}")
        overrides = [f"hardware={s.hardware(profile)}", f"hardware.devices={ranks}", *extra]
        summary = v.train(cell, [*overrides, *s.gpt(batch_size=s.batch_size // ranks)])
        single = v.result(AUTO).figures["losses"]
        mine = _losses(summary)
        steps = sorted(set(single) & set(mine))
        expect(bool(steps), "the two runs logged no common step")
        difference = max(abs(single[step] - mine[step]) for step in steps)
        cell.figures.update(max_loss_difference=difference, compared_steps=len(steps))
        expect(
            difference < s.parity_tolerance,
            f"losses differ from one device's by {difference:.2e}",
        )
        return cell.figures

    return check


def optimization(profile: str) -> Callable[[Verification, Cell], dict[str, Any]]:
    """A cell that trains the GPT on hardware=auto with optimization ``profile``."""

    def check(v: Verification, cell: Cell) -> dict[str, Any]:
        s = v.setting
        overrides = [f"hardware={s.hardware('auto')}", f"optimization={profile}"]
        if profile in ("fast", "auto"):
            overrides += s.measured_profiles
        v.train(cell, [*overrides, *s.gpt()])
        return cell.figures

    return check


def fast_compiled(v: Verification, cell: Cell) -> dict[str, Any]:
    """``optimization=fast`` with the whole model compiled, as its compile trial chooses on
    a run long enough to repay the compilation (a 25-step run is not): the runner's side of
    the compiled plain loop."""
    s = v.setting
    overrides = [
        f"hardware={s.hardware('auto')}",
        "optimization=fast",
        "optimization.compile.enabled=true",
        "optimization.compile.per_block=false",
        f"optimization.compile.backend={s.compile_backend}",
    ]
    summary = v.train(cell, [*overrides, *s.gpt()])
    expect(summary["compile"] is True, "the model was not compiled")
    return cell.figures


def bf16(v: Verification, cell: Cell) -> dict[str, Any]:
    """bf16 mixed precision, eager: the pack's side of the plain loop's bf16 ratio."""
    s = v.setting
    overrides = [f"hardware={s.hardware('auto')}", "optimization.precision=bf16-mixed"]
    summary = v.train(cell, [*overrides, *s.gpt()])
    expect(summary["precision"] == "bf16-mixed", f"it ran in {summary['precision']}")
    return cell.figures


def fp8_overrides(setting: Setting, enabled: bool) -> list[str]:
    """``optimization=fp8`` on hardware=auto, float8 on or off (off: the same bf16 run with
    the same compile, the reference of its speed-up); emulated and eager on the CPU twin."""
    overrides = [f"hardware={setting.hardware('auto')}", "optimization=fp8"]
    if not enabled:
        overrides.append("optimization.fp8.enabled=false")
    elif setting.dry_run:
        overrides.append("optimization.fp8.emulate=true")
    if setting.dry_run:
        overrides += setting.measured_profiles
    return [*overrides, *setting.gpt()]


def fp8_reference(v: Verification, cell: Cell) -> dict[str, Any]:
    """The fp8 profile with float8 off: bf16 mixed precision and the same compile."""
    summary = v.train(cell, fp8_overrides(v.setting, enabled=False))
    expect(summary["precision"] == "bf16-mixed", f"it ran in {summary['precision']}")
    expect(not summary.get("fp8"), "float8 layers in a run with float8 off")
    return cell.figures


def fp8(v: Verification, cell: Cell) -> dict[str, Any]:
    """Float8 training: torchao's float8 Linear layers (emulated on the CPU twin), their
    throughput over the same run in bf16, and the peak its MFU divides by."""
    summary = v.train(cell, fp8_overrides(v.setting, enabled=True))
    layers = summary.get("fp8") or {}
    expect(bool(layers.get("layers")), "no Linear layer was converted to float8")
    expect(layers.get("emulated") is v.setting.dry_run, f"emulated: {layers.get('emulated')}")
    reference = v.result(FP8_REFERENCE).figures
    cell.figures["float8_layers"] = len(layers["layers"])
    cell.figures["fp8_over_bf16"] = round(
        cell.figures["tokens_per_second"] / reference["tokens_per_second"], 3
    )
    return cell.figures


def fp8_auto(v: Verification, cell: Cell) -> dict[str, Any]:
    """``optimization=fast``'s float8 choice (``fp8.enabled=auto``) on the GPU: timed on a
    model wide enough for float8 to pay, against the same bf16 steps compiled per block;
    on the CPU twin: off without a trial, for want of float8 tensor cores."""
    s = v.setting
    overrides = [f"hardware={s.hardware('auto')}", "optimization=fast"]
    if s.dry_run:
        overrides += [*s.measured_profiles, *s.gpt()]
        expected = "float8 needs a GPU with float8 tensor cores"
    else:
        overrides += ["optimization.compile.enabled=true", *replace(s, model=WIDE_MODEL).gpt()]
        expected = "float8 steps measured"
    summary = v.train(cell, overrides)
    reason = summary.get("fp8_reason") or (summary.get("fp8") or {}).get("reason") or ""
    expect(expected in reason, f"fp8.enabled=auto decided: {reason or 'nothing'}")
    cell.figures["fp8_choice"] = reason
    cell.figures["float8_layers"] = len((summary.get("fp8") or {}).get("layers", []))
    return cell.figures


def fp16(v: Verification, cell: Cell) -> dict[str, Any]:
    """fp16 mixed precision with its loss scaler on the GPU; the CPU twin: refused."""
    s = v.setting
    overrides = [f"hardware={s.hardware('auto')}", "optimization.precision=16-mixed"]
    if s.dry_run:  # the runner's checks in this process: no run starts
        return v.refused(cell, [*overrides, *s.gpt()], "cannot run on cpu")
    summary = v.train(cell, [*overrides, *s.gpt()])
    expect(summary["precision"] == "16-mixed", f"it ran in {summary['precision']}")
    expect(bool(summary["loss_scaler"]), "no loss scaler")
    return cell.figures


def image_channels_last(v: Verification, cell: Cell) -> dict[str, Any]:
    """The image recipe in channels-last memory format, as ``channels_last: auto`` (the
    ``fast`` and ``auto`` profiles' setting) chooses it on one device."""
    s = v.setting
    overrides = [f"hardware={s.hardware('auto')}", "recipe=image", "optimization=default"]
    overrides += ["optimization.channels_last=auto", *s.loop()]
    summary = v.train(cell, overrides)
    expect(summary["channels_last"] is True, "convolution weights are not channels-last")
    expect(
        "kept whole on one device" in (summary.get("channels_last_reason") or ""),
        f"channels-last auto gave {summary.get('channels_last_reason')!r}",
    )
    return cell.figures


def precision_rules(v: Verification, cell: Cell) -> dict[str, Any]:
    """The run plan's precision rules: ``auto`` is bf16 on sm80+ and fp16 with a loss
    scaler before; bf16 on an old GPU, fp16 under FSDP2 and fp16 on a CPU are refused;
    and ``auto`` on this machine follows them."""
    from lightning_accel.machine import THIS_MACHINE, CudaDevice, CudaFacts, MachineFacts
    from lightning_accel.plan.run import plan_run
    from lightning_accel.precision import auto_precision
    from lightning_accel.profiles import as_optimization

    def gpu(capability: tuple[int, int]) -> MachineFacts:
        device = CudaDevice(0, "GPU", capability, 80.0)
        return MachineFacts(versions={}, cuda=CudaFacts(devices=(device,)))

    def planned(hardware: str, precision: str, machine: Any = THIS_MACHINE) -> str:
        profile = dataclasses.replace(as_optimization("default"), precision=precision)
        return plan_run(hardware, profile, machine).precision.precision

    def refusal(hardware: str, precision: str, machine: Any, sentence: str) -> str:
        try:
            chosen = planned(hardware, precision, machine)
        except ConfigError as error:
            expect(sentence in str(error), f"{precision} on {hardware}: {error}")
            return str(error)
        raise CheckFailed(f"{precision} on {hardware} ran as {chosen} instead of a refusal")

    rules = {
        "sm90 auto": planned("auto", "auto", gpu((9, 0))),
        "sm80 auto": planned("auto", "auto", gpu((8, 0))),
        "sm75 auto": planned("auto", "auto", gpu((7, 5))),
    }
    wanted = {"sm90 auto": "bf16-mixed", "sm80 auto": "bf16-mixed", "sm75 auto": "16-mixed"}
    expect(rules == wanted, f"auto chose {rules}, not {wanted}")
    refusals = [
        refusal("auto", "bf16-mixed", gpu((7, 5)), "compute capability 8.0"),
        refusal("fsdp2", "16-mixed", gpu((9, 0)), "not supported by the fsdp2 strategy"),
        refusal("cpu", "16-mixed", THIS_MACHINE, "cannot run on cpu"),
    ]
    here = planned(v.setting.hardware("auto"), "auto")
    expected_here = auto_precision(v.setting.device_type).precision
    expect(here == expected_here, f"auto on this machine chose {here}, not {expected_here}")
    if not v.setting.dry_run:
        capability = THIS_MACHINE.cuda_capability() or (0, 0)
        rule = "bf16-mixed" if capability >= (8, 0) else "16-mixed"
        expect(here == rule, f"auto on sm_{capability[0]}{capability[1]} chose {here}")
    return {**rules, "this machine auto": here, "refusals": len(refusals)}


def resume(v: Verification, cell: Cell) -> dict[str, Any]:
    """Resume the one-device FSDP2 run from its sharded checkpoint for two more steps."""
    s = v.setting
    checkpoint = v.result(FSDP2_ONE).figures["checkpoint"]
    overrides = [f"hardware={s.hardware('fsdp2')}", "hardware.devices=1"]
    overrides += [f"ckpt_path={checkpoint}", *s.gpt(steps=s.steps + 2)]
    summary = v.train(cell, overrides)
    expect(summary["steps"] == s.steps + 2, f"it ended at step {summary['steps']}")
    return cell.figures


def consolidate(v: Verification, cell: Cell) -> dict[str, Any]:
    """Consolidate the sharded checkpoint into one file that loads into the model without a
    process group."""
    import torch

    from lightning_accel.checkpoints import consolidate_checkpoint
    from lightning_accel.models import GPTLanguageModel

    sharded = Path(v.result(FSDP2_ONE).figures["checkpoint"])
    started = time.perf_counter()
    output = consolidate_checkpoint(sharded, v.work / "consolidated.ckpt")
    seconds = time.perf_counter() - started
    checkpoint = torch.load(output, map_location="cpu", weights_only=True)
    model = GPTLanguageModel(**v.setting.model, seq_len=v.setting.seq_len)
    model.load_state_dict(checkpoint["state_dict"])  # strict: every key, every shape
    expect(checkpoint["global_step"] == v.setting.steps, f"step {checkpoint['global_step']}")
    return {
        "global_step": checkpoint["global_step"],
        "megabytes": round(output.stat().st_size / 2**20, 1),
        "consolidate_seconds": round(seconds, 2),
    }


def plain_loop_speed(setting: Setting, bf16: bool, compiled: bool) -> tuple[float, float]:
    """Seconds per step and tokens per second of a plain PyTorch loop (no Lightning) that
    trains the same GPT as the runner, with the same optimizer, clipping and batch, on
    random tokens, timed after the warm-up steps; ``compiled``: the whole model compiled
    (with the setting's compile backend)."""
    import torch
    import torch.nn.functional as F

    from lightning_accel.devices import synchronized_time
    from lightning_accel.models.gpt import GPT, GPTConfig

    device = torch.device(setting.device_type)
    torch.manual_seed(0)
    shape = setting.model
    config = GPTConfig(256, setting.seq_len, shape["n_layer"], shape["d_model"], shape["n_head"])
    model = GPT(config).to(device)
    forward = torch.compile(model, backend=setting.compile_backend) if compiled else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95))
    size = (setting.steps, setting.batch_size, setting.seq_len + 1)
    tokens = torch.randint(0, 256, size, device=device)

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext()

    def step(index: int) -> None:
        inputs, targets = tokens[index, :, :-1], tokens[index, :, 1:]
        with autocast():
            logits = forward(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for index in range(setting.warmup_steps):
        step(index)
    started = synchronized_time(device)
    for index in range(setting.warmup_steps, setting.steps):
        step(index)
    seconds = (synchronized_time(device) - started) / (setting.steps - setting.warmup_steps)
    return seconds, setting.batch_size * setting.seq_len / seconds


def plain_loop(
    reference: str, bf16: bool, compiled: bool = False
) -> Callable[[Verification, Cell], dict[str, Any]]:
    """A cell that times the plain loop in a process of its own and divides the runner's
    throughput (cell ``reference``, same model, batch and precision) by it."""

    def check(v: Verification, cell: Cell) -> dict[str, Any]:
        from lightning_accel.cli.rank_server import in_a_fresh_process

        pack = v.result(reference).figures
        # a process of its own, as the runner's cells run: this one's earlier cells (cached
        # device memory, compiled code) do not touch it
        timeout = v.seconds_left()
        step, tokens = in_a_fresh_process(
            plain_loop_speed, v.setting, bf16, compiled, timeout=timeout
        )
        flops, peak = pack.get("flops_per_step"), pack.get("peak_tflops_per_device")
        figures = {
            "steps": v.setting.steps,
            "steps_per_second": round(1 / step, 3),
            "step_seconds": round(step, 5),
            "tokens_per_second": round(tokens, 1),
            "mfu": round(flops / step / (peak * 1e12), 4) if flops and peak else None,
            "precision": "bf16-mixed" if bf16 else "32-true",
            "compiled": compiled,
            "runner_cell": reference,
            "pack_over_plain": round(pack["tokens_per_second"] / tokens, 3),
        }
        expect(figures["pack_over_plain"] > 0, "the runner measured no tokens")
        return figures

    return check


def cells_for(setting: Setting, optimization_profiles: list[str]) -> list[Cell]:
    """The cells of ``setting``, in the order they run (each after the cells it needs)."""
    twin = " (CPU twin)" if setting.dry_run else ""
    ranks = setting.parallel_ranks
    cells = [
        Cell(COLLECTIVES, f"a one-rank {setting.backend} all-reduce starts and sums", collectives),
        Cell(AUTO, f"hardware=auto resolves to the device{twin}; fp32 GPT", hardware_auto),
        Cell("ddp · 1 device", f"DDP on one device{twin}", one_device("ddp"), (COLLECTIVES,)),
        Cell(
            FSDP2_ONE,
            f"FSDP2 on one device, sharded checkpoint{twin}",
            one_device("fsdp2"),
            (COLLECTIVES,),
        ),
        Cell(
            "fsdp2 · cpu offload",
            "shards and optimizer state in CPU memory, metric states on the device",
            cpu_offload,
            (COLLECTIVES,),
        ),
    ]
    # on several GPUs FSDP2's offloaded gradients are reduced over gloo beside NCCL, which
    # no CPU twin can show
    layouts = {"ddp": ("ddp",), "fsdp2": ("fsdp2",), "fsdp2 offload": ("fsdp2", OFFLOAD)}
    if ranks > 1:
        for name, (profile, *extra) in layouts.items():
            if setting.dry_run and name != "ddp":
                continue
            cells.append(
                Cell(
                    f"{name} · {ranks} devices",
                    f"{name} on {ranks} ranks follows one device's losses",
                    parity(profile, *extra),
                    needs=(COLLECTIVES, AUTO),
                )
            )
    for profile in optimization_profiles:
        if profile != "default":  # the first cell runs default
            cells.append(Cell(f"optimization={profile}", "GPT recipe", optimization(profile)))
    cells += [
        Cell(BF16, "bf16 mixed precision runs", bf16),
        Cell(FP8_REFERENCE, "the fp8 profile with float8 off: bf16 and compile", fp8_reference),
        Cell(
            "optimization=fp8",
            "float8 Linear layers (emulated on the CPU twin), throughput over bf16",
            fp8,
            needs=(FP8_REFERENCE,),
        ),
        Cell(
            "precision · 16-mixed",
            "refused on the CPU" if setting.dry_run else "fp16 with its loss scaler",
            fp16,
        ),
        Cell("image · channels_last", "image recipe, channels-last weights", image_channels_last),
        Cell("precision rules", "auto and the refusals, through the run plan", precision_rules),
        Cell("checkpoint · resume", "resumes the sharded checkpoint", resume, needs=(FSDP2_ONE,)),
        Cell(
            "checkpoint · consolidate",
            "one file that loads without a process group",
            consolidate,
            needs=(FSDP2_ONE,),
        ),
        Cell("plain loop · fp32", "same model, no Lightning", plain_loop(AUTO, False), (AUTO,)),
        Cell("plain loop · bf16", "same model, no Lightning", plain_loop(BF16, True), (BF16,)),
    ]
    if FAST in (cell.name for cell in cells):  # fast compiled against the plain loop's best
        best = plain_loop(FAST_COMPILED, True, compiled=True)
        cells += [
            Cell(FAST_COMPILED, "fast, the whole model compiled", fast_compiled),
            Cell("plain loop · bf16 compiled", "the whole model compiled", best, (FAST_COMPILED,)),
        ]
    # last: on the GPU it compiles a 4,096-wide model twice, and a short loan is better
    # spent on the cells before it
    cells.append(
        Cell(
            "fp8 · auto",
            "fast's float8 choice: timed at 4,096 wide on the GPU, off on the CPU twin",
            fp8_auto,
        )
    )
    return cells


def selected_cells(cells: list[Cell], words: str) -> list[Cell]:
    """The cells whose names hold one of the comma-separated ``words`` (any case), with the
    cells they need, in their order.

    Raises:
        ConfigError: no word, or a word that no cell's name holds.
    """
    by_name = {cell.name: cell for cell in cells}
    given = [word for word in (w.strip().lower() for w in words.split(",")) if word]
    if not given:
        raise ConfigError("--only", words, "names no cell; give one or more", list(by_name))
    wanted: set[str] = set()
    for word in given:
        matched = [name for name in by_name if word in name.lower()]
        if not matched:
            raise ConfigError("--only", word, "names no cell", list(by_name))
        wanted.update(matched)
    pending = list(wanted)
    while pending:  # the cells they need, and the cells those need
        for need in by_name[pending.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                pending.append(need)
    return [cell for cell in cells if cell.name in wanted]


def run_cell(verification: Verification, cell: Cell) -> None:
    """Run one cell, timed; a failure is recorded with its last line."""
    started = time.perf_counter()
    cell.started = True
    failed = [n for n in cell.needs if not verification.cells[n].passed]
    try:
        if failed:
            raise CheckFailed(f"needs {', '.join(failed)}, which failed")
        cell.figures = cell.run(verification, cell)
        cell.passed = True
    except Exception as error:  # any failure is the cell's result, the others go on
        lines = [line for line in str(error).splitlines() if line.strip()]
        cell.error = lines[-1] if lines else type(error).__name__
    cell.seconds = time.perf_counter() - started


def run_cells(
    verification: Verification,
    cells: list[Cell],
    jobs: int = 1,
    cell_ended: Callable[[], None] = lambda: None,
) -> None:
    """Run ``cells``, ``jobs`` at a time (1 where their figures are measurements), in
    their order except that a cell waits for the cells it needs; ``cell_ended`` is called
    as each ends. Past the verification's deadline the cells left are not started."""
    pending = list(cells)
    running: dict[Future, Cell] = {}
    done: set[str] = set()
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            deadline = verification.deadline
            if deadline is not None and time.perf_counter() >= deadline:
                for cell in pending:
                    cell.error = "not run: the deadline had passed"
                pending = []
                if not running:
                    break
            ready = [c for c in pending if set(c.needs) <= done]
            if not ready and not running:
                raise ValueError(f"{pending[0].name} needs a cell that is not in the list")
            for cell in ready[: jobs - len(running)]:
                pending.remove(cell)
                verification.cells[cell.name] = cell
                say(f"[{len(cells) - len(pending)}/{len(cells)}] {cell.name}: {cell.checks}")
                running[pool.submit(run_cell, verification, cell)] = cell
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()
                done.add(running.pop(future).name)
            cell_ended()


def machine_facts(setting: Setting) -> dict[str, Any]:
    """The machine and software the cells ran on."""
    import torch

    from lightning_accel.machine import package_version

    facts: dict[str, Any] = {
        "machine": platform.node(),
        "dry_run": setting.dry_run,
        "torch": torch.__version__,
        "lightning": package_version("lightning"),
        "cuda": torch.version.cuda,
        "gpus": setting.gpus,
        "gpu": None,
        "capability": None,
    }
    if not setting.dry_run:
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["capability"] = list(torch.cuda.get_device_capability(0))
    return facts


def device_slug(facts: dict[str, Any]) -> str:
    """The results' file name: the GPU's name (``nvidia-h200``), or ``cpu-dry-run``."""
    name = facts["gpu"] or "cpu dry run"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _number(value: Any, form: str) -> str:
    return "-" if value is None else format(value, form)


def _notes(cell: Cell) -> str:
    f = cell.figures
    if not cell.passed:
        return cell.error or ""
    if "max_loss_difference" in f:
        return f"max loss difference {f['max_loss_difference']:.1e}"
    if "fp8_over_bf16" in f:
        return f"{f['float8_layers']} float8 layers; fp8 / bf16: {f['fp8_over_bf16']:.2f}x"
    if "pack_over_plain" in f:
        return f"{f['runner_cell']} / plain loop: {f['pack_over_plain']:.2f}x"
    if "refusal" in f:
        return f["refusal"]
    if "fp8_choice" in f:
        return f"fp8 {'on' if f.get('float8_layers') else 'off'}: {f['fp8_choice']}"
    if "this machine auto" in f:
        return f"auto here: {f['this machine auto']}; {f['refusals']} refusals"
    if "global_step" in f:
        return f"{f['megabytes']} MiB at step {f['global_step']}"
    if "all_reduce_seconds" in f:
        return f"{f['backend']}: started in {f['init_seconds']:g} s"
    return ""


COLUMNS = (
    "cell",
    "status",
    "wall s",
    "steps/s",
    "tokens/s",
    "MFU",
    "peak MiB",
    "precision",
    "strategy",
    "notes",
)


def table_rows(cells: list[Cell]) -> list[list[str]]:
    """One row of :data:`COLUMNS` per cell, for the console and the markdown file."""
    rows = []
    for cell in cells:
        f = cell.figures
        rows.append(
            [
                cell.name,
                cell.status if cell.status != "failed" else "FAILED",
                f"{cell.seconds:.1f}",
                _number(f.get("steps_per_second"), ",.2f"),
                _number(f.get("tokens_per_second"), ",.0f"),
                _number(f.get("mfu"), ".1%"),
                _number(f.get("peak_memory_mb"), ",.0f"),
                f.get("precision") or "",
                f.get("strategy") or "",
                _notes(cell),
            ]
        )
    return rows


def markdown(facts: dict[str, Any], cells: list[Cell], seconds: float) -> str:
    """The results as a markdown page: the machine, then one table row per cell."""
    device = facts["gpu"] or "CPU twins (dry run)"
    passed = sum(c.passed for c in cells)
    lines = [
        f"# lightning-accel verify: {device}",
        "",
        f"{passed} of {len(cells)} cells passed in {seconds:.0f} s on {facts['machine']}: "
        f"torch {facts['torch']}, lightning {facts['lightning']}, CUDA {facts['cuda']}, "
        f"{facts['gpus']} GPU(s). Written by `lightning-accel verify`"
        + (" --dry-run" if facts["dry_run"] else "")
        + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
    ]
    for row in table_rows(cells):
        lines.append("| " + " | ".join(value.replace("|", "\\|") for value in row) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    out: Path, setting: Setting, cells: list[Cell], seconds: float
) -> tuple[Path, Path]:
    """Write ``<device>.json`` and ``<device>.md`` to ``out``; return their paths."""
    facts = machine_facts(setting)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{device_slug(facts)}.json"
    markdown_path = json_path.with_suffix(".md")
    statuses = [c.status for c in cells]
    record = {
        **facts,
        "setting": dataclasses.asdict(setting),
        "seconds": round(seconds, 1),
        "passed": statuses.count("passed"),
        "failed": statuses.count("failed"),
        "not_run": statuses.count("not run"),
        "cells": [c.record() for c in cells],
    }
    # whole files, rewritten as each cell ends: a check stopped from outside leaves the last
    write_text_whole(json_path, json.dumps(record, indent=2) + "\n")
    write_text_whole(markdown_path, markdown(facts, cells, seconds))
    return json_path, markdown_path


def parse_arguments(args: list[str]) -> argparse.Namespace:
    """The options of ``lightning-accel verify``.

    Raises:
        ConfigError: an unknown option or a bad value.
    """
    parser = VerbOptions("verify")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=directory_path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=directory_path, default=None)
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT)
    parser.add_argument("--deadline", type=float, default=None)
    parser.add_argument("--only", default=None)
    options = parser.parse_options(args)
    require_seconds("--cell-timeout", options.cell_timeout)
    require_seconds("--deadline", options.deadline)
    check_writable(options.out, "--out")
    if options.work is not None:
        check_writable(options.work, "--work")
    return options


def main(args: list[str]) -> int:
    """Run ``lightning-accel verify`` with the arguments after the verb."""
    quiet_upstream()
    try:
        options = parse_arguments(args)
    except ConfigError as error:
        fail(error)
    if options.help:
        print(USAGE, end="")
        return 0
    import torch

    from lightning_accel.cli.rank_server import start_rank_server
    from lightning_accel.profiles import profile_names

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not options.dry_run and gpus == 0:
        fail(
            f"this machine has no CUDA GPU that torch {torch.__version__} can use, so there "
            "is nothing to verify; `lightning-accel verify --dry-run` runs the CPU twins."
        )
    setting = DRY_RUN if options.dry_run else gpu_setting(gpus)
    known = profile_names("optimization")
    cells = cells_for(setting, [name for name in OPTIMIZATION_PROFILES if name in known])
    if options.only is not None:
        try:
            cells = selected_cells(cells, options.only)
        except ConfigError as error:
            fail(error)
    work = options.work or Path("runs/verify") / time.strftime("%Y-%m-%d_%H-%M-%S")
    work.mkdir(parents=True, exist_ok=True)
    mode = (
        "the CPU twins (dry run)"
        if setting.dry_run
        else f"{gpus} x {torch.cuda.get_device_name(0)}"
    )
    say(f"verifying {len(cells)} cells on {mode}; runs in {work}")
    started = time.perf_counter()
    deadline = started + options.deadline if options.deadline else None
    verification = Verification(setting, work, options.cell_timeout, deadline)

    def record_so_far() -> None:
        write_results(options.out, setting, cells, time.perf_counter() - started)

    # the server the plain loops run forked from, started here once (the cells run in
    # threads, which cannot start it), its imports beside the first cells
    start_rank_server()
    # a dry run's cells measure nothing: two at a time; a GPU's one at a time
    run_cells(verification, cells, jobs=2 if setting.dry_run else 1, cell_ended=record_so_far)
    seconds = time.perf_counter() - started
    table = Table(title=f"verify: {mode}", title_justify="left")
    for name in COLUMNS:
        table.add_column(name, overflow="fold")
    for row in table_rows(cells):
        table.add_row(
            *map(escape, row), style={"passed": None, "not run": "yellow"}.get(row[1], "red")
        )
    print_table(table)
    written = write_results(options.out, setting, cells, seconds)
    failed = [c.name for c in cells if c.status == "failed"]
    not_run = [c.name for c in cells if c.status == "not run"]
    say(
        f"{sum(c.passed for c in cells)} of {len(cells)} cells passed in {seconds:.0f} s"
        + (f" (failed: {', '.join(failed)})" if failed else "")
        + (f" (not run, past the deadline: {', '.join(not_run)})" if not_run else "")
        + f"; results in {written[0]} and {written[1]}"
    )
    return 1 if failed or not_run else 0
