"""The fault matrix's schedule: which rank is killed where, chosen by a seed."""

from __future__ import annotations

import pytest

from lightning_accel.callbacks.fault_injection import FAULT_POINTS, KillRank, fault_schedule
from lightning_accel.errors import ConfigError


def _described(faults: list[KillRank]) -> list[tuple[str, int, int]]:
    return [(f.point, f.step, f.rank) for f in faults]


def test_a_seed_chooses_the_same_faults_and_every_point_twice_in_ten() -> None:
    faults = fault_schedule(seed=0, count=10, max_steps=24, ranks=2)
    assert _described(faults) == _described(fault_schedule(0, 10, 24, 2))
    assert _described(faults) != _described(fault_schedule(1, 10, 24, 2))
    assert sorted(f.point for f in faults) == sorted(FAULT_POINTS * 2)
    assert all(1 <= f.step <= 22 for f in faults)
    assert {f.rank for f in faults if f.point == "checkpoint_write"} == {0}, "the writer"


def test_an_unknown_fault_point_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="point='oom' is not a fault point; valid choices: "):
        KillRank("oom", step=3)
