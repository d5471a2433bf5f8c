"""The other processes' load beside a timing: read from the kernel's counters of this
process's processors, this process's own time taken out; a trial taken beside a busy
neighbour is taken again, and a choice made from one says so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_accel import cpu_load
from lightning_accel.cpu_load import OtherLoad, busy_seconds
from lightning_accel.machine import usable_cores
from lightning_accel.optimize.measured_choices import (
    BUSY_SHARE,
    StepTimes,
    fastest_precision,
    measured_alone,
)
from lightning_accel.precision import PrecisionChoice

TICKS = os.sysconf("SC_CLK_TCK")
CPUS = sorted(os.sched_getaffinity(0))


def _write_stat(path: Path, first_cpu_busy_ticks: int) -> None:
    """A /proc/stat whose processors are this process's; the first has the given busy
    ticks (user), every one 1,000 idle ticks; a processor this process may not use is
    very busy."""
    lines = ["cpu  999999 0 0 0 0 0 0 0 0 0"]
    for cpu in CPUS:
        user = first_cpu_busy_ticks if cpu == CPUS[0] else 0
        lines.append(f"cpu{cpu} {user} 0 0 1000 0 0 0 0 0 0")
    lines += [f"cpu{max(CPUS) + 1} 777777 0 0 0 0 0 0 0 0 0", "intr 12345", ""]
    path.write_text("\n".join(lines))


def test_busy_seconds_add_the_busy_fields_of_this_process_processors(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  50 50 50 50 50 50 50 50\ncpu0 1 2 3 1000 4 5 6 7\ncpu1 10 20 30 1000 40 50 60 70\n"
    )
    assert busy_seconds(stat, cpus={0}) == pytest.approx((1 + 2 + 3 + 5 + 6 + 7) / TICKS)
    assert busy_seconds(stat, cpus={0, 1}) == pytest.approx((24 + 240) / TICKS)
    assert busy_seconds(tmp_path / "absent") is None


def test_other_load_is_the_busy_time_of_others_per_second(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _write_stat(stat, first_cpu_busy_ticks=100)
    with OtherLoad(stat) as load:
        time.sleep(0.6)
        # others kept one processor busy for the block's 0.6 s
        _write_stat(stat, first_cpu_busy_ticks=100 + round(0.6 * TICKS))
    assert load.cores == pytest.approx(1.0, abs=0.1)


def test_a_block_too_short_for_the_counters_measures_nothing(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _write_stat(stat, first_cpu_busy_ticks=0)
    with OtherLoad(stat) as load:
        _write_stat(stat, first_cpu_busy_ticks=TICKS)
    assert load.cores is None
    with OtherLoad(tmp_path / "absent") as unreadable:
        time.sleep(cpu_load.MIN_SECONDS)
    assert unreadable.cores is None


def test_a_busy_neighbour_counts_and_this_process_own_work_does_not() -> None:
    spin = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass"
    # started through a process that ends at once: a neighbour, not a child of this process
    start = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {spin!r}])"
    subprocess.run([sys.executable, "-c", start], check=True, timeout=30)
    with OtherLoad() as load:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # this process's own work, on another core
            pass
    # the neighbour had a core to itself or shared one with this process; other processes
    # on the machine only add to it
    assert load.cores is not None and load.cores > 0.4


def test_the_processes_this_one_started_are_its_own_work() -> None:
    # a child that spends a second of processor time, then waits: it is still running
    # when the second reading is taken, as torch.compile's workers are
    spin = "import sys, time\nwhile time.process_time() < 1.0: pass\nsys.stdin.read()"
    before = cpu_load.own_seconds()
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while cpu_load.own_seconds() - before < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, "the child still runs"
        assert cpu_load.own_seconds() - before >= 1.0
    finally:
        child.kill()
        child.wait(timeout=30)


class _Reading:
    """A stand-in load reading of ``cores``."""

    def __init__(self, cores: float | None) -> None:
        self.cores = cores

    def __enter__(self) -> _Reading:
        return self

    def __exit__(self, *error: object) -> None:
        return None


class _Trials:
    """Stand-in trials: one load reading each, in order; each trial's steady time is its
    number."""

    def __init__(self, *cores: float | None) -> None:
        self.readings = list(cores)
        self.count = 0

    def load(self) -> _Reading:
        return _Reading(self.readings.pop(0))

    def measure(self, module, batch, candidates):  # noqa: ANN001, ANN201 - a stand-in trial
        self.count += 1
        return {name: StepTimes(1.0, float(self.count)) for name in candidates}


BUSY = BUSY_SHARE * usable_cores() + 0.5


@pytest.mark.parametrize(
    ("readings", "trials", "note"),
    [
        ((0.1,), 1, ""),
        ((None,), 1, ""),
        ((BUSY, 0.0), 2, ""),
        ((BUSY, BUSY), 2, f", beside other processes that kept {BUSY:.1f} of "),
    ],
    ids=["alone", "unknown load", "busy then alone", "busy twice"],
)
def test_a_trial_beside_busy_processes_is_taken_again_once_and_then_named(
    readings: tuple[float | None, ...], trials: int, note: str
) -> None:
    stand_in = _Trials(*readings)
    timings, said = measured_alone(stand_in.measure, None, None, {"a": None}, stand_in.load)
    assert stand_in.count == trials
    assert timings["a"].steady == float(trials), "the last trial's timings are kept"
    assert said.startswith(note) and (note == "") == (said == "")


def test_a_precision_chosen_beside_busy_processes_says_so() -> None:
    stand_in = _Trials(BUSY, BUSY)
    reduced = PrecisionChoice("bf16-mixed", "the CPU has bf16 matrix units")
    choice = fastest_precision(reduced, None, None, stand_in.measure, stand_in.load)
    assert choice.precision == "32-true"
    assert choice.reason.startswith("bf16-mixed measured 1.00x the speed of 32-true on this model")
    assert f"beside other processes that kept {BUSY:.1f} of" in choice.reason
    assert choice.reason.endswith("busy; kept 32-true")
