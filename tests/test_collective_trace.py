"""Hangs that name their cause: each rank's trace (step, hook, collective) and the
diagnosis that compares them; the flight recorder they are read from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers import refusal

from lightning_accel.callbacks.collective_trace import hook_of, in_sigterm_handler
from lightning_accel.cli.main import main
from lightning_accel.collectives import (
    STOPPED,
    Collective,
    RankTrace,
    diagnose,
    load_traces,
    read_traces,
    write_trace,
)

BARRIER = Collective("barrier", 37)
GRADIENTS = Collective("all_reduce", 37, ((21984,),))


def _trace(rank: int, collective: Collective | None, hook: str, world: int = 2) -> RankTrace:
    return RankTrace(rank, world, step=3, hook=hook, where="model.py:42", collective=collective)


def test_ranks_that_made_another_collective_are_named_with_the_hook_of_the_one_skipped() -> None:
    traces = [_trace(0, BARRIER, "Model.training_step"), _trace(1, GRADIENTS, "Model.backward")]
    assert diagnose(traces, world=2) == (
        "rank 1 did not make the barrier #37 that rank 0 made in Model.training_step at step "
        "3 (model.py:42); rank 1 made all_reduce #37 of 21,984 elements in Model.backward at "
        "step 3 (model.py:42)"
    )


def test_the_collective_most_ranks_made_is_the_reference() -> None:
    traces = [
        _trace(0, GRADIENTS, "Model.backward", 3),
        _trace(1, BARRIER, "Model.training_step", 3),
        _trace(2, GRADIENTS, "Model.backward", 3),
    ]
    assert diagnose(traces, world=3).startswith(
        "rank 1 did not make the all_reduce #37 of 21,984 elements that ranks 0, 2 made in "
        "Model.backward"
    )


def test_a_rank_without_a_trace_never_arrived() -> None:
    waiting = _trace(0, GRADIENTS, "Model.backward", world=3)
    waiting.waited_seconds = 15.2
    assert diagnose([waiting], world=3) == (
        "rank 0 waited 15 s in all_reduce #37 of 21,984 elements in Model.backward at step 3 "
        "(model.py:42); ranks 1, 2 never arrived (no trace: stopped, dead, or busy outside "
        "collectives)"
    )


def test_a_rank_that_raised_outside_any_collective_is_not_said_to_have_failed_in_one() -> None:
    """A rank whose checkpoint the disk could not hold was said to have "failed in
    all_gather #29", the last collective it had made."""
    raised = _trace(0, None, "ModelCheckpoint.on_train_end")
    raised.error = "StorageFull: last.ckpt needs about 9.8 MiB, more than the 1.0 MiB free"
    waiting = _trace(1, BARRIER, "ModelCheckpoint.on_train_end")
    assert diagnose([raised, waiting], world=2) == (
        "rank 0 failed outside any collective in ModelCheckpoint.on_train_end at step 3 "
        "(model.py:42); rank 1 waited in barrier #37 in ModelCheckpoint.on_train_end at step "
        "3 (model.py:42)"
    )


TIMED_OUT = "RuntimeError: Timed out waiting 5000ms for recv operation to complete"
# what rank 1's trace says -> how the diagnosis continues after rank 0's wait
OTHER_RANK = {
    "stopped outside collectives": (
        None,
        STOPPED,
        "rank 1 never arrived: the launcher stopped it in Model.training_step at step 3 "
        "(model.py:42), outside any collective",
    ),
    "lost its peers inside the collective": (
        GRADIENTS,
        "RuntimeError: Connection closed by peer [127.0.0.1]:18660",
        "rank 1 was in all_reduce #37 of 21,984 elements in Model.training_step at step 3 "
        "(model.py:42) but did not finish it before rank 0 gave up (it then lost its peers)",
    ),
    # frozen inside the collective, it timed out too, but only once resumed
    "timed out only once resumed": (
        GRADIENTS,
        TIMED_OUT,
        "rank 1 was in all_reduce #37 of 21,984 elements in Model.training_step at step 3 "
        "(model.py:42) but did not finish it before rank 0 gave up",
    ),
    # frozen inside the collective: its watcher wrote "waiting", then the launcher ended it
    "frozen inside the collective": (
        GRADIENTS,
        None,
        "rank 1 was in all_reduce #37 of 21,984 elements in Model.training_step at step 3 "
        "(model.py:42) but did not finish it before rank 0 gave up",
    ),
}


@pytest.mark.parametrize("case", list(OTHER_RANK))
def test_a_rank_that_never_finished_what_rank_0_waited_in_is_named(case: str) -> None:
    collective, error, expected = OTHER_RANK[case]
    waiting = _trace(0, GRADIENTS, "Model.backward")
    waiting.error, waiting.written_at = TIMED_OUT, 100.0
    other = _trace(1, collective, "Model.training_step")
    other.error, other.written_at = error, 103.0
    assert diagnose([waiting, other], world=2) == (
        "rank 0 waited in all_reduce #37 of 21,984 elements in Model.backward at step 3 "
        f"(model.py:42); {expected}"
    )


def test_ranks_that_time_out_together_all_waited() -> None:
    traces = [_trace(rank, GRADIENTS, "Model.backward") for rank in (0, 1)]
    for trace, written_at in zip(traces, (100.0, 100.2), strict=True):
        trace.error, trace.written_at = TIMED_OUT, written_at
    assert diagnose(traces, world=2) == "; ".join(
        f"rank {rank} waited in all_reduce #37 of 21,984 elements in Model.backward at step 3 "
        "(model.py:42)"
        for rank in (0, 1)
    )


def test_traces_round_trip_and_only_the_latest_attempt_counts(tmp_path: Path) -> None:
    old = _trace(0, BARRIER, "Model.training_step")
    new = RankTrace(1, 2, attempt=1, step=7, collective=GRADIENTS, recent=[BARRIER, GRADIENTS])
    for trace in (old, new):
        write_trace(tmp_path / "traces", trace)
    assert read_traces(tmp_path) == [new]
    assert [p.name for p in (tmp_path / "traces").iterdir()] == ["rank-0.json", "rank-1.json"]


class _Failing(pl.LightningModule):
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return torch.distributed.all_reduce(batch)  # no process group: fails here


def test_the_hook_is_the_innermost_lightning_method_on_the_stack() -> None:
    module = _Failing()
    with pytest.raises(ValueError) as error:
        module.training_step(torch.ones(1), 0)
    hook, where, collective = hook_of(_frames(error.value))
    assert hook == "_Failing.training_step"
    assert where == f"test_collective_trace.py:{_Failing.training_step.__code__.co_firstlineno + 1}"
    assert collective == "all_reduce"


def _frames(error: BaseException) -> list:
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.insert(0, traceback.tb_frame)
        traceback = traceback.tb_next
    return frames


def test_an_error_in_lightnings_sigterm_broadcast_is_told_from_the_runs_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pins Lightning's SIGTERM handler, which broadcasts wherever the signal lands: a rank
    resumed after the launcher's SIGTERM fails in that broadcast, not in the run's
    collective of that number."""
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    made = []

    def broadcast(tensor: torch.Tensor, src: int) -> None:
        made.append((tuple(tensor.shape), src))
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast", broadcast)
    strategy = SimpleNamespace(launcher=None, root_device=torch.device("cpu"))
    trainer = SimpleNamespace(local_rank=1, world_size=2, strategy=strategy)
    with pytest.raises(RuntimeError) as error:
        _SignalConnector(trainer)._sigterm_notifier_fn(15, None)  # noqa: SLF001
    assert made == [((1,), 0)]
    assert in_sigterm_handler(_frames(error.value))
    with pytest.raises(ValueError) as other:
        _Failing().training_step(torch.ones(1), 0)
    assert not in_sigterm_handler(_frames(other.value))


FLIGHT_RECORDER = """
import os, tempfile, time, torch, torch.distributed as dist
from lightning_accel.collectives import pending_collectives, recent_collectives
os.environ["TORCH_FR_BUFFER_SIZE"] = "100"
store = dist.FileStore(tempfile.mktemp(), 1)
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
dist.all_reduce(torch.ones(3, 4))
dist.barrier()
# gloo marks a finished collective completed in the recorder after the call returns, its
# entry and the group's status one after the other: the status read is the one printed
for _ in range(200):
    pending = pending_collectives()
    if not pending:
        break
    time.sleep(0.05)
print([(c.op, c.sequence, c.sizes, c.completed) for c in recent_collectives()])
print(pending)
"""


def test_the_flight_recorder_records_gloo_collectives_with_their_numbers_and_sizes() -> None:
    """Pins torch's private ``_dump_fr_trace_json``, which the traces read."""
    result = subprocess.run(
        [sys.executable, "-c", FLIGHT_RECORDER], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    recent, pending = result.stdout.splitlines()[-2:]
    assert recent == "[('all_reduce', 1, ((3, 4),), True), ('barrier', 2, (), True)]"
    assert pending == "{}"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--trace"], "needs a run directory"),
        (["--trace", "no-such-run"], "'no-such-run' is not a run directory"),
        (["--trace", "."], "holds no traces (traces/rank-N.json)"),
        (
            ["--trace", "damaged"],
            "holds no readable trace: rank-0.json, rank-1.json in traces/ are not traces",
        ),
    ],
)
def test_doctor_trace_bad_input_exits_2(
    arguments: list[str],
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "damaged" / "traces").mkdir(parents=True)
    (tmp_path / "damaged" / "traces" / "rank-0.json").write_text("not json")
    (tmp_path / "damaged" / "traces" / "rank-1.json").write_text('{"rank": "x", "size": 2}')
    assert fragment in refusal(["doctor", *arguments], capsys)


def test_a_file_that_is_no_trace_is_left_out_of_the_diagnosis(tmp_path: Path) -> None:
    written = _trace(1, GRADIENTS, "Model.backward")
    write_trace(tmp_path / "traces", written)
    (tmp_path / "traces" / "rank-0.json").write_text('["a list, not a trace"]')
    assert load_traces(tmp_path) == ([written], [tmp_path / "traces" / "rank-0.json"])
    assert read_traces(tmp_path) == [written]


def test_doctor_trace_prints_each_rank_and_the_diagnosis(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for trace in (_trace(0, BARRIER, "Model.training_step"), _trace(1, GRADIENTS, "M.backward")):
        write_trace(tmp_path / "traces", trace)
    assert main(["doctor", "--trace", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["diagnosis"].startswith("rank 1 did not make the barrier #37")
    assert [t["hook"] for t in report["traces"]] == ["Model.training_step", "M.backward"]
