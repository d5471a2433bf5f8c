"""Choosing by measuring: a few training steps of the real model on a real batch in each
candidate precision, eager against compiled, and with and without float8 layers, keeping
what is faster over the run."""

from __future__ import annotations

import copy
import math
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_accel.config import CompileConfig, Float8Config
from lightning_accel.cpu_load import OtherLoad
from lightning_accel.devices import synchronize
from lightning_accel.machine import usable_cores
from lightning_accel.optimize.float8 import convert_to_float8
from lightning_accel.optimize.transforms import compile_model
from lightning_accel.precision import PrecisionChoice

# A reduced precision, or compilation, is kept only when it is clearly faster than what it
# replaces: trial medians a few percent apart are within what a busy machine moves them by.
REQUIRED_SPEEDUP = 1.05
# A trial beside other processes that keep this share of the usable cores busy times their
# contention as much as the candidates: it is taken again once, and a choice made from one
# that was not alone says so.
BUSY_SHARE = 0.25


def _autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


@contextmanager
def _quiet() -> Iterator[None]:
    # training_step's self.log warns without a Trainer; that is expected here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class Candidate:
    """One way of running the training step that a trial times: its ``precision`` and,
    when given, the ``compile_config`` it is compiled with and the ``float8`` settings its
    Linear layers are converted with (before compiling, as a run does)."""

    precision: str
    compile_config: CompileConfig | None = None
    float8: Float8Config | None = None


@dataclass(frozen=True)
class StepTimes:
    """Seconds of a first training step (compilation included) and the median of the
    later ones; or, for a candidate that could not run, the ``error`` it raised (and
    infinite times)."""

    first: float
    steady: float
    error: Exception | None = None

    def failure(self) -> str:
        """The error, in a few words for a choice's reason."""
        if self.error is None:
            return ""
        text = str(self.error).strip().splitlines()
        return f"{type(self.error).__name__}: {text[0]}" if text else type(self.error).__name__

    def required(self) -> StepTimes:
        """These times, for a candidate the choice is measured against.

        Raises:
            Exception: the error the candidate raised: without it there is nothing to
                measure against.
        """
        if self.error is not None:
            raise self.error
        return self


# What a trial measures: each candidate's step times on the module and batch.
Measure = Callable[[pl.LightningModule, Any, Mapping[str, Candidate]], dict[str, StepTimes]]


def candidate_model(module: pl.LightningModule, candidate: Candidate) -> pl.LightningModule:
    """A copy of ``module`` (it is not changed) prepared as ``candidate`` says."""
    model = copy.deepcopy(module).train()
    if candidate.float8 is not None:
        convert_to_float8(model, candidate.float8)
    if candidate.compile_config is not None:
        compile_model(model, candidate.compile_config)
    precision = candidate.precision
    if precision.endswith("-true") and precision != "32-true":
        model = model.to(torch.bfloat16 if precision.startswith("bf16") else torch.float16)
    return model


def _training_step(
    module: pl.LightningModule, batch: Any, candidate: Candidate
) -> Callable[[], float]:
    """A timed training step (forward, backward, gradients dropped) of a copy of
    ``module`` run as ``candidate`` says; each call returns its seconds."""
    model = candidate_model(module, candidate)
    device = next(model.parameters()).device
    precision = candidate.precision

    def step() -> float:
        started = time.perf_counter()
        with _autocast(precision, device), _quiet():
            output = model.training_step(batch, 0)
        loss = output["loss"] if isinstance(output, dict) else output
        loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - started

    return step


def _failed(error: Exception) -> StepTimes:
    """The times of a candidate that raised ``error``. Its frames' locals (the candidate's
    model copy, its activations) are let go, so that device memory it ran out of is free for
    the candidates after it; the traceback still prints."""
    traceback.clear_frames(error.__traceback__)
    return StepTimes(math.inf, math.inf, error)


def step_times(
    module: pl.LightningModule,
    batch: Any,
    candidates: Mapping[str, Candidate],
    min_seconds: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 300,
) -> dict[str, StepTimes]:
    """Time the training step of each candidate on copies of ``module`` (it is not
    changed): one first step each (compilation included), then rounds of one step per
    candidate, in alternating order so that no candidate always runs warmer, until every
    candidate has ``min_seconds`` of steps and ``min_rounds`` rounds are done (at most
    ``max_rounds``). Steady time is the median step: a noisy neighbour moves it little.
    A candidate that raises (a compiler or float8 kernel that fails on this device, memory
    it runs out of) is left out of the later rounds and returned with its error, so that the
    choice keeps what runs."""
    steps: dict[str, Callable[[], float]] = {}
    first: dict[str, float] = {}
    failed: dict[str, StepTimes] = {}
    for name, candidate in candidates.items():
        try:
            steps[name] = _training_step(module, batch, candidate)
            first[name] = steps[name]()
        except Exception as error:  # noqa: BLE001 - a candidate that cannot run is not chosen
            steps.pop(name, None)
            failed[name] = _failed(error)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for done in range(max_rounds):
        timed_enough = min((sum(times) for times in samples.values()), default=math.inf)
        if done >= min_rounds and timed_enough >= min_seconds:
            break
        for name in order if done % 2 == 0 else reversed(order):
            if name in failed:
                continue
            try:
                samples[name].append(steps[name]())
            except Exception as error:  # noqa: BLE001 - as above
                failed[name] = _failed(error)
                samples.pop(name)
    timed = {name: StepTimes(first[name], statistics.median(samples[name])) for name in samples}
    return {name: failed.get(name) or timed[name] for name in candidates}


def measured_alone(
    measure: Measure,
    module: pl.LightningModule,
    batch: Any,
    candidates: Mapping[str, Candidate],
    load: Callable[[], OtherLoad] = OtherLoad,
) -> tuple[dict[str, StepTimes], str]:
    """``measure``'s timings of ``candidates``, taken again once if other processes kept
    :data:`BUSY_SHARE` of the usable cores busy during the first trial, and a note for the
    choice's reason ("" when the kept trial ran alone; ``load`` reads the other load)."""
    cores = usable_cores()
    for _ in range(2):
        with load() as others:
            timings = measure(module, batch, candidates)
        if others.cores is None or others.cores < BUSY_SHARE * cores:
            return timings, ""
    busy = f"{others.cores:.1f} of {cores} cores"
    return timings, f", beside other processes that kept {busy} busy"


def fastest_precision(
    candidate: PrecisionChoice,
    module: pl.LightningModule,
    batch: Any,
    measure: Measure = step_times,
    load: Callable[[], OtherLoad] = OtherLoad,
) -> PrecisionChoice:
    """Keep ``candidate`` (the hardware's reduced precision) only if it trains ``module``
    at least 5% faster than fp32 on ``batch``, timed interleaved (see
    :func:`measured_alone` for ``load``); otherwise fp32."""
    if candidate.precision == "32-true":
        return candidate
    names = ("32-true", candidate.precision)
    trial = {name: Candidate(name) for name in names}
    timings, beside = measured_alone(measure, module, batch, trial, load)
    fp32, reduced = timings["32-true"].required(), timings[candidate.precision]
    if reduced.error is not None:
        failed = f"{candidate.precision} failed in the trial ({reduced.failure()})"
        return PrecisionChoice("32-true", f"{failed}; kept 32-true")
    speedup = fp32.steady / reduced.steady
    measured = f"measured {speedup:.2f}x the speed of 32-true on this model{beside}"
    if speedup >= REQUIRED_SPEEDUP:
        return PrecisionChoice(candidate.precision, f"{candidate.reason}; {measured}")
    return PrecisionChoice("32-true", f"{candidate.precision} {measured}; kept 32-true")


def _weighed(
    measured: str,
    speedup: float,
    saved_per_step: float,
    compile_seconds: float,
    run_steps: int | None,
    compilation: str = "of compilation",
) -> tuple[bool, str]:
    """Whether a measured ``speedup`` pays over the run: at least :data:`REQUIRED_SPEEDUP`,
    and ``saved_per_step`` over ``run_steps`` steps (None: a run of no set length) more than
    the ``compile_seconds`` it costs first; and ``measured`` with the weighing added."""
    pays = speedup >= REQUIRED_SPEEDUP
    if not pays:
        measured += f" (under the {REQUIRED_SPEEDUP:.2f}x required)"
    if run_steps is None:
        unbounded = "over a run of no set length"
        return pays, f"{measured}; {compile_seconds:.1f} s {compilation} {unbounded}"
    saved = saved_per_step * run_steps
    measured += (
        f"; {compile_seconds:.1f} s {compilation} against {max(saved, 0.0):.1f} s saved "
        f"over {run_steps} steps"
    )
    return pays and saved > compile_seconds, measured


@dataclass(frozen=True)
class CompileChoice:
    """Whether a run compiles its model, block by block or whole, and why."""

    enabled: bool
    reason: str
    per_block: bool = False


def compile_pays(
    module: pl.LightningModule,
    batch: Any,
    precision: str,
    compile_config: CompileConfig,
    run_steps: int | None,
    whole_model: bool = False,
    measure: Measure = step_times,
    load: Callable[[], OtherLoad] = OtherLoad,
) -> CompileChoice:
    """Compile only if it pays over the run: compiled steps must be at least
    :data:`REQUIRED_SPEEDUP` times as fast as eager ones, and the time they save over
    ``run_steps`` steps must exceed the compilation's own time (the first compiled step's
    excess); a run of no set length (None) needs only the speed-up. With ``whole_model``
    (a run whose strategy does not shard the model block by block), a per-block
    ``compile_config`` is timed beside the whole model compiled, and the faster of the two
    is weighed against eager: on a GPT-2 small on an H200 per-block compile measured 0.94x
    eager's speed and the whole model 1.15x. The trial is taken again if it ran beside busy
    processes (:func:`measured_alone`)."""
    modes = {"compiled": compile_config}
    if whole_model and compile_config.per_block:
        whole = replace(compile_config, per_block=False)
        modes = {"per block": compile_config, "whole model": whole}
    trial = {"eager": Candidate(precision)}
    trial.update({name: Candidate(precision, config) for name, config in modes.items()})
    timings, beside = measured_alone(measure, module, batch, trial, load)
    eager = timings["eager"].required()
    ran = [name for name in modes if timings[name].error is None]
    failed = "".join(
        f"; {name} failed in the trial ({timings[name].failure()})"
        for name in modes
        if name not in ran
    )
    if not ran:
        failures = "; ".join(f"{name}: {timings[name].failure()}" for name in modes)
        reason = f"compiling failed in the trial ({failures}){beside}: kept eager"
        return CompileChoice(False, reason, compile_config.per_block)
    fastest = min(ran, key=lambda name: timings[name].steady)
    compiled = timings[fastest]
    compile_seconds = max(0.0, compiled.first - compiled.steady)
    speedup = eager.steady / compiled.steady
    if len(modes) == 1:
        measured = f"compiled steps measured {speedup:.2f}x the speed of eager"
    else:
        speeds = " and ".join(
            f"{eager.steady / timings[name].steady:.2f}x ({name})" for name in ran
        )
        measured = f"compiled steps measured {speeds} the speed of eager{failed}"
    saved = eager.steady - compiled.steady
    pays, measured = _weighed(measured, speedup, saved, compile_seconds, run_steps)
    per_block = modes[fastest].per_block
    if not pays:
        return CompileChoice(False, f"{measured}{beside}: kept eager", per_block)
    done = "compiled" if len(modes) == 1 else f"compiled {fastest}"
    return CompileChoice(True, f"{measured}{beside}: {done}", per_block)


@dataclass(frozen=True)
class Float8Choice:
    """Whether a run trains its Linear layers in float8, and why."""

    enabled: bool
    reason: str


def float8_pays(
    module: pl.LightningModule,
    batch: Any,
    precision: str,
    compile_config: CompileConfig,
    float8: Float8Config,
    run_steps: int | None,
    measure: Measure = step_times,
    load: Callable[[], OtherLoad] = OtherLoad,
) -> Float8Choice:
    """Train in float8 only if it pays over the run: steps with the Linear layers in float8
    must be at least :data:`REQUIRED_SPEEDUP` times as fast as the run's steps without them,
    both in ``precision`` and compiled as ``compile_config`` (the choice already made) says,
    and the time saved over ``run_steps`` must exceed the extra compilation the float8 casts
    cost. Float8 without compile rarely pays: only compiling fuses its casts."""
    compiled = compile_config if compile_config.enabled is True else None
    trial = {
        "without": Candidate(precision, compiled),
        "float8": Candidate(precision, compiled, replace(float8, enabled=True)),
    }
    timings, beside = measured_alone(measure, module, batch, trial, load)
    without, converted = timings["without"].required(), timings["float8"]
    if converted.error is not None:
        failed = f"float8 steps failed in the trial ({converted.failure()})"
        return Float8Choice(False, f"{failed}{beside}: kept off")
    extra = max(0.0, (converted.first - converted.steady) - (without.first - without.steady))
    speedup = without.steady / converted.steady
    steps = "compiled" if compiled else "eager"
    measured = (
        f"{float8.recipe} float8 steps measured {speedup:.2f}x the speed of {precision} ones "
        f"({steps})"
    )
    saved = without.steady - converted.steady
    pays, measured = _weighed(measured, speedup, saved, extra, run_steps, "more compilation")
    return Float8Choice(pays, f"{measured}{beside}: {'float8 on' if pays else 'kept off'}")
