"""The benchmarks' turn-taking: two sides run their measured blocks one at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers import REPO

WARMUP, BLOCK, BLOCKS = 2, 3, 4


@pytest.fixture
def turns_module(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - a module
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import turns

    return turns


def test_sides_take_turns_at_blocks_of_steps(turns_module, tmp_path: Path) -> None:
    turns_module.make_pipes(tmp_path)
    steps_run: list[str] = []  # the side of every measured step, in the order they ran
    lock = threading.Lock()
    results: dict[str, list[float]] = {}

    def side(name: str) -> None:
        turns = turns_module.Turns(tmp_path, name, WARMUP, BLOCK, BLOCKS, timeout=30)
        for step in range(turns.total_steps):
            turns.at_step(step)
            if WARMUP <= step < WARMUP + BLOCK * BLOCKS:
                with lock:
                    steps_run.append(name)
        turns.close()
        results[name] = turns.block_seconds

    threads = [threading.Thread(target=side, args=(name,)) for name in turns_module.SIDES]
    for thread in threads:
        thread.start()
    turns_module.hand_first_baton(tmp_path, "pack", timeout=30)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    # pack first, then strictly alternating blocks of BLOCK steps
    expected = [name for _ in range(BLOCKS) for name in ("pack", "plain") for _ in range(BLOCK)]
    assert steps_run == expected
    assert all(len(results[name]) == BLOCKS for name in turns_module.SIDES)


def test_a_side_whose_partner_never_hands_back_stops_with_a_message(
    turns_module, tmp_path: Path
) -> None:
    turns_module.make_pipes(tmp_path)
    turns = turns_module.Turns(tmp_path, "plain", WARMUP, BLOCK, BLOCKS, timeout=0.5)
    with pytest.raises(turns_module.PartnerGone, match="waited 0.5 s for its turn"):
        for step in range(turns.total_steps):
            turns.at_step(step)
    turns.close()


def test_waiting_for_a_side_that_ended_stops_at_once(turns_module, tmp_path: Path) -> None:
    turns_module.make_pipes(tmp_path)
    with pytest.raises(turns_module.PartnerGone, match="ended before its first turn"):
        turns_module.wait_until_ready(tmp_path, ("pack",), alive=lambda: False, timeout=30)
