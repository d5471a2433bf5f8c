"""A SIGTERM (a preempted or cancelled job) stops every rank at the same step, saves that
step in ``last.ckpt`` and exits 143; the same command then resumes from it as if the run had
never stopped. Lightning's per-step broadcast of the flag is gone. Ctrl-C (SIGINT) stops at
once and exits 130, naming the last checkpoint and the command that resumes from it."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import yaml
from helpers import (
    GLOBAL_BATCH,
    LOOP,
    TEST_IMPORTS,
    Runs,
    SignalAfterBackward,
    SignalAtStep,
    TinyRegression,
    free_port,
    run_cli,
    start_long_run,
    wait_for_training,
)
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_accel import build_trainer
from lightning_accel.callbacks import PreemptionCheckpoint
from lightning_accel.checkpoints import consolidate_checkpoint
from lightning_accel.data.loading import ResumableDataLoader, ResumableSampler
from lightning_accel.errors import SIGINT_EXIT_CODE, STOPPED_EXIT_CODE
from lightning_accel.safe_load import load_data_file
from lightning_accel.strategies.agreed_stop import AgreedStop
from lightning_accel.strategies.step_signals import StepBoundaryStop

pytestmark = pytest.mark.slow


def _callback(name: str, target: str, directory: Path) -> list[str]:
    return [
        f"+callbacks.{name}._target_=helpers.{target}",
        f"+callbacks.{name}.directory={directory}",
    ]


def _stop_steps(directory: Path) -> list[int]:
    """The step at which each rank stopped (helpers.RecordStop), by rank."""
    return [int((directory / f"rank-{rank}.stopped").read_text()) for rank in (0, 1)]


def test_a_sigterm_to_one_rank_stops_every_rank_at_one_step_and_the_same_command_resumes(
    runs: Runs,
) -> None:
    uninterrupted = runs.train("ddp", "ddp_cpu", 2)
    run_dir = runs.root / "ddp_sigterm_to_rank_1"
    command = [*runs.base, *LOOP, "hardware=ddp_cpu", "hardware.devices=2"]
    command += [f"data.batch_size={GLOBAL_BATCH // 2}", f"hydra.run.dir={run_dir}"]
    command += ["+callbacks.sigterm._target_=helpers.SignalAtStep", "+callbacks.sigterm.step=12"]
    command += ["+callbacks.sigterm.rank=1", *_callback("stop", "RecordStop", run_dir)]
    command += _callback("count", "CountBroadcasts", run_dir)

    stopped = run_cli(command, cwd=runs.root, timeout=300, env=TEST_IMPORTS)
    assert stopped.returncode == STOPPED_EXIT_CODE, stopped.stderr[-3000:]
    # the flag rank 1 raised during step 12 is combined in step 13 and read before step 14
    assert _stop_steps(run_dir) == [13, 13]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"stopped on SIGTERM after step 13 (every rank); saved {last}; `" in stopped.stderr
    assert f" hydra.run.dir={run_dir}` resumes from it" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "exitcode" not in stopped.stderr
    assert load_data_file(last)["global_step"] == 13
    assert not list(run_dir.rglob("rank-*.json")), "a stop is not a failure: no collective traces"

    resumed = run_cli(command, cwd=runs.root, timeout=300, env=TEST_IMPORTS)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stderr
    assert runs.summary(run_dir)["steps"] == 20
    # Lightning would broadcast rank 0's flag once per step (7 times) on each rank
    broadcasts = [int((run_dir / f"rank-{rank}.broadcasts").read_text()) for rank in (0, 1)]
    assert broadcasts == [0, 0]
    reference = runs.losses(uninterrupted)
    after_stop = {s: v for s, v in runs.losses(run_dir).items() if s > 13}
    assert after_stop and after_stop == {s: reference[s] for s in after_stop}
    expected = runs.final_weights(uninterrupted)
    weights = runs.final_weights(run_dir)
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key


def _signal_once_training(
    process: subprocess.Popen, directory: Path, signum: signal.Signals
) -> str:
    """Send ``signum`` to the process group of a run started by ``start_long_run`` (its own
    session) once its ranks train; returns the run's stderr when it has ended."""
    try:
        wait_for_training(directory)
        os.killpg(process.pid, signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return stderr


def test_a_sigterm_to_the_whole_process_group_stops_every_rank_together_and_saves_that_step(
    tmp_path: Path, small_corpus: Path
) -> None:
    """As ``scancel`` or a preemption signals every process of the job: the command, its
    rank server, the FSDP2 ranks and their loader workers."""
    run_dir = tmp_path / "run"
    process = start_long_run(
        tmp_path,
        f"data.source={small_corpus}",
        "data.num_workers=2",
        f"hydra.run.dir={run_dir}",
        *_callback("stop", "RecordStop", tmp_path),
        hardware="fsdp2_cpu",
        own_session=True,
    )
    stderr = _signal_once_training(process, tmp_path, signal.SIGTERM)
    assert process.returncode == STOPPED_EXIT_CODE, stderr[-3000:]
    step, other = _stop_steps(tmp_path)
    assert step == other
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"stopped on SIGTERM after step {step} (every rank); saved {last}" in stderr
    assert "Traceback" not in stderr and "exitcode" not in stderr
    whole = consolidate_checkpoint(last, tmp_path / "whole.ckpt")
    assert load_data_file(whole)["global_step"] == step


def test_ctrl_c_stops_one_process_naming_the_command_that_resumes_to_the_same_weights(
    runs: Runs,
) -> None:
    uninterrupted = runs.train("single", "cpu", 1)
    run_dir = runs.root / "single_interrupted"
    interrupt = ["+callbacks.interrupt._target_=helpers.SignalAtStep"]
    interrupt += ["+callbacks.interrupt.step=7", "+callbacks.interrupt.rank=0"]
    interrupt += [f"+callbacks.interrupt.signum={int(signal.SIGINT)}"]
    command = [*runs.base, *LOOP, "hardware=cpu", f"data.batch_size={GLOBAL_BATCH}", *interrupt]
    stopped = run_cli([*command, f"hydra.run.dir={run_dir}"], cwd=runs.root, env=TEST_IMPORTS)
    assert stopped.returncode == SIGINT_EXIT_CODE, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    said = re.search(
        r"stopped on SIGINT at step 7; its last checkpoint is (\S+); `([^`]+)` resumes from it",
        stopped.stderr,
    )
    assert said is not None, stopped.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert said[1] == str(last) and load_data_file(last)["global_step"] == 5
    resume = shlex.split(said[2])
    assert resume[:2] == ["lightning-accel", "train"] and resume[-1] == f"hydra.run.dir={run_dir}"
    # the same run without the callback that pressed Ctrl-C
    resumed_args = [a for a in resume[1:] if not a.startswith("+callbacks.interrupt")]
    resumed = run_cli(resumed_args, cwd=runs.root, env=TEST_IMPORTS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stderr
    expected = runs.final_weights(uninterrupted)
    weights = runs.final_weights(run_dir)
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key


def test_ctrl_c_to_the_process_group_of_a_two_rank_run_stops_it_with_one_account(
    tmp_path: Path,
) -> None:
    """As a terminal signals every process of the command: the command, its rank server and
    the ranks; torch elastic's notes of closing them are left out."""
    process = start_long_run(tmp_path, own_session=True)
    stderr = _signal_once_training(process, tmp_path, signal.SIGINT)
    assert process.returncode == SIGINT_EXIT_CODE, stderr[-3000:]
    assert "lightning-accel: stopped on SIGINT; it saved no checkpoint; logs in " in stderr
    assert "Traceback" not in stderr and "Closing process" not in stderr, stderr[-3000:]


def test_one_process_stopped_on_sigterm_saves_the_step_it_stopped_at(tmp_path: Path) -> None:
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)
    preemption = PreemptionCheckpoint()
    trainer = build_trainer(
        "cpu",
        max_steps=10,
        callbacks=[saver, preemption, SignalAtStep(step=3, rank=0)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    x = torch.randn(64, 8)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)))
    with pytest.raises(SIGTERMException):
        trainer.fit(TinyRegression(), train_dataloaders=data)
    assert preemption.saved == tmp_path / "last.ckpt"
    assert load_data_file(preemption.saved)["global_step"] == 3


class RecordSaves(pl.Callback):
    """The global step of each checkpoint saved."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: pl.Trainer, *args: object) -> None:
        self.steps.append(trainer.global_step)


def _fit_accumulating(
    root: Path, callbacks: list[pl.Callback], ckpt_path: Path | None = None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """Fit TinyRegression in one process for 6 optimizer steps of 4 micro-batches each
    (batches in order, resumable mid-epoch); returns the final weights."""
    pl.seed_everything(0, verbose=False)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = ResumableDataLoader(data, ResumableSampler(data, "sequential"), batch_size=4)
    trainer = build_trainer(
        "cpu",
        max_steps=6,
        accumulate_grad_batches=4,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=str(root),
        **kwargs,
    )
    model = TinyRegression()
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return model.state_dict()


def _assert_same_weights(
    weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key


def test_one_process_stopped_inside_an_accumulation_window_resumes_to_the_uninterrupted_weights(
    tmp_path: Path,
) -> None:
    """Lightning stops after the batch in progress: the checkpoint then lacks the window's
    accumulated gradients, and the resumed run ends elsewhere."""
    expected = _fit_accumulating(tmp_path / "uninterrupted", [])
    run = tmp_path / "stopped"
    saver = ModelCheckpoint(dirpath=run, save_top_k=0, save_last=True)
    resumed_saver = ModelCheckpoint(dirpath=run, save_top_k=0, save_last=True)
    with pytest.raises(SIGTERMException):
        # batch 5 lies inside the window of batches 4-7 (the second optimizer step)
        _fit_accumulating(
            run, [saver, PreemptionCheckpoint(), SignalAfterBackward(signal.SIGTERM, 5)]
        )
    assert load_data_file(run / "last.ckpt")["global_step"] == 2
    resumed = _fit_accumulating(run, [resumed_saver], ckpt_path=run / "last.ckpt")
    _assert_same_weights(resumed, expected)


@pytest.mark.parametrize(
    ("arguments", "slurm_job", "added"),
    [
        ({}, False, False),  # Lightning stops after a whole step: no hooks to dispatch
        ({"accumulate_grad_batches": 2}, False, True),
        ({"plugins": [SLURMEnvironment(auto_requeue=True)]}, False, True),
        ({"plugins": [SLURMEnvironment(auto_requeue=False)]}, False, False),
        ({}, True, True),  # Lightning's detected SLURMEnvironment requeues
    ],
    ids=["plain", "accumulating", "requeueing", "not requeueing", "detected SLURM job"],
)
def test_build_trainer_adds_the_one_process_stop_where_lightning_could_act_mid_step(
    arguments: dict[str, Any], slurm_job: bool, added: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if slurm_job:
        monkeypatch.setenv("SLURM_NTASKS", "1")
        monkeypatch.setenv("SLURM_JOB_NAME", "train")
    trainer = build_trainer("cpu", logger=False, **arguments)
    assert any(isinstance(c, StepBoundaryStop) for c in trainer.callbacks) is added


def _fake_scontrol(directory: Path) -> Path:
    """A folder holding an ``scontrol`` that appends its arguments to
    ``<directory>/scontrol.calls``."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {directory}/scontrol.calls\n')
    scontrol.chmod(0o755)
    return bin_dir


def test_one_process_requeue_signal_saves_after_the_optimizer_step_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning saves ``hpc_ckpt`` from inside its signal handler, here in the middle of
    the window of batches 4-7."""
    expected = _fit_accumulating(tmp_path / "uninterrupted", [])
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "127.0.0.1"}
    slurm |= {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"{_fake_scontrol(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    run, saves = tmp_path / "requeued", RecordSaves()
    weights = _fit_accumulating(
        run,
        [SignalAfterBackward(signal.SIGUSR1, 5), saves],
        plugins=[SLURMEnvironment(auto_requeue=True)],
    )
    assert saves.steps == [2]
    assert (tmp_path / "scontrol.calls").read_text().split("\n") == ["requeue 4242", ""]
    _assert_same_weights(weights, expected)  # training went on to the end
    resumed = _fit_accumulating(tmp_path / "resumed", [], ckpt_path=run / "hpc_ckpt_1.ckpt")
    _assert_same_weights(resumed, expected)


def test_ranks_that_do_not_stop_together_save_nothing(tmp_path: Path) -> None:
    """Lightning's own DDP stops only the signalled rank: a save, a collective, would wait
    for ranks that go on training."""

    def save_checkpoint(path: Path) -> None:
        raise AssertionError(f"saved {path}")

    trainer = SimpleNamespace(
        checkpoint_callback=ModelCheckpoint(dirpath=tmp_path, save_last=True),
        world_size=2,
        strategy=DDPStrategy(),
        global_step=5,
        save_checkpoint=save_checkpoint,
    )
    preemption = PreemptionCheckpoint()
    preemption.on_exception(trainer, TinyRegression(), SIGTERMException())  # type: ignore[arg-type]
    assert preemption.saved is None
    assert list(tmp_path.iterdir()) == []


def test_lightnings_sigterm_broadcast_handlers_and_requeue_are_what_agreed_stop_replaces() -> None:
    """Pins the private Lightning names AgreedStop overrides and reads."""
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance)
    trainer = pl.Trainer(logger=False, plugins=[SLURMEnvironment(auto_requeue=True)])
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    connector = _SignalConnector(SimpleNamespace())  # type: ignore[arg-type]
    assert connector._original_handlers == {}
    assert connector.received_sigterm is False
    requeue = inspect.getsource(_SignalConnector._slurm_sigusr_handler_fn)
    assert "self.trainer.save_checkpoint(hpc_save_path)" in requeue
    assert '["scontrol", "requeue", job_id]' in requeue


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A gloo process group of this process alone; the SIGTERM and SIGUSR1 handlers are
    put back afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _trainer(accumulate_grad_batches: int = 1) -> SimpleNamespace:
    """What AgreedStop reads and writes of a trainer: a fit loop at the start of an epoch
    of 100 batches."""
    progress = SimpleNamespace(current=SimpleNamespace(ready=0), is_last_batch=False)
    return SimpleNamespace(
        strategy=SimpleNamespace(launcher=None),
        _signal_connector=SimpleNamespace(_original_handlers={}, received_sigterm=False),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        accumulate_grad_batches=accumulate_grad_batches,
        num_training_batches=100,
        global_rank=0,
        world_size=2,
        state=SimpleNamespace(status=TrainerStatus.RUNNING),
    )


def _stops_at_this_check(stop: AgreedStop, trainer: SimpleNamespace) -> None:
    assert trainer._signal_connector.received_sigterm is False
    with pytest.raises(SIGTERMException):
        stop.check()
    assert trainer._signal_connector.received_sigterm is True
    stop.close()


def test_a_sigterm_stops_at_the_check_after_the_one_that_combined_it(
    one_rank_group: None,
) -> None:
    trainer = _trainer()
    stop = AgreedStop(trainer, timeout_s=10)  # type: ignore[arg-type]
    assert trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor == stop.check
    stop.check()
    stop.check()  # nothing signalled: training goes on
    os.kill(os.getpid(), signal.SIGTERM)  # recorded by the handler, nothing raised
    stop.check()  # starts combining the flag
    _stops_at_this_check(stop, trainer)


def test_inside_an_accumulation_window_the_stop_waits_for_the_windows_optimizer_step(
    one_rank_group: None,
) -> None:
    """A checkpoint saved inside the window would lack its accumulated gradients."""
    trainer = _trainer(accumulate_grad_batches=4)
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    stop = AgreedStop(trainer, timeout_s=10)  # type: ignore[arg-type]
    progress.ready = 5  # batches 0-4 started: the window of batches 4-7 is open
    os.kill(os.getpid(), signal.SIGTERM)
    stop.check()  # before batch 5: starts combining the flag
    for started in (6, 7):  # before batches 6 and 7, still inside the window
        progress.ready = started
        stop.check()  # combined, and due once batch 7 has stepped
        assert trainer._signal_connector.received_sigterm is False, f"stopped at {started}"
    progress.ready = 8  # before batch 8: the optimizer stepped after batch 7
    _stops_at_this_check(stop, trainer)


def test_the_requeue_signal_calls_lightnings_requeue_at_the_check_after_the_one_that_combined_it(
    one_rank_group: None,
) -> None:
    trainer = _trainer()
    requeues: list[int] = []
    trainer._signal_connector._slurm_sigusr_handler_fn = lambda signum, frame: requeues.append(
        signum
    )
    stop = AgreedStop(trainer, timeout_s=10, requeue_signal=signal.SIGUSR1)  # type: ignore[arg-type]
    stop.check()
    os.kill(os.getpid(), signal.SIGUSR1)  # recorded by the handler, nothing done
    assert requeues == []
    stop.check()  # starts combining the flag
    assert requeues == []
    stop.check()  # requeues, and training goes on
    assert requeues == [signal.SIGUSR1]
    stop.check()
    stop.check()
    assert requeues == [signal.SIGUSR1], "once per signal"
    stop.close()


def test_a_requeue_signal_handler_of_the_users_own_is_left_as_it_was(
    one_rank_group: None,
) -> None:
    """Lightning does not requeue where a handler was set before the fit; neither is it
    taken over here."""
    trainer = _trainer()
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    handler = signal.getsignal(signal.SIGUSR1)
    trainer._signal_connector._original_handlers = {signal.SIGUSR1: handler}
    stop = AgreedStop(trainer, timeout_s=10, requeue_signal=signal.SIGUSR1)  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGUSR1) is handler
    stop.close()


def test_outside_the_main_thread_the_signal_handler_is_left_as_it_was(
    one_rank_group: None,
) -> None:
    """As Lightning does: only the main thread may set a handler."""
    before = signal.getsignal(signal.SIGTERM)
    made: list[AgreedStop] = []
    thread = threading.Thread(target=lambda: made.append(AgreedStop(_trainer(), timeout_s=10)))  # type: ignore[arg-type]
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) == before
    made[0].check()
    made[0].close()


def _two_ranks(
    arguments: list[str], env: dict[str, str], rank_envs: list[dict[str, str]]
) -> tuple[list[int], str]:
    """Run ``python -c *arguments`` as two ranks (``env`` with each rank's own variables);
    their exit codes, and the ends of their standard errors (rank 1's first)."""
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", *arguments],
            env={**env, **rank_env},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank_env in rank_envs
    ]
    try:
        errors = [rank.communicate(timeout=90)[1] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    return [rank.returncode for rank in ranks], errors[1][-3000:] + errors[0][-3000:]


# Two accel_ddp ranks of a drop-in Trainer, started as torchrun starts them, making 6
# optimizer steps of 4 micro-batches each (batches in order, resumable mid-epoch): `whole`
# runs them; `stop` sends SIGTERM to rank 1 after the backward of batch 5 (inside the window
# of batches 4-7); `resume` goes on from the stop's last.ckpt. Each rank writes the step it
# ended at, rank 0 the final weights.
DDP_ACCUMULATING_RANK = """
import os, signal, sys
from pathlib import Path
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from helpers import SignalAfterBackward, TinyRegression
from lightning_accel import PreemptionCheckpoint
from lightning_accel.data.loading import ResumableDataLoader, ResumableSampler

run, mode = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])
pl.seed_everything(0, verbose=False)
x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
sampler = ResumableSampler(data, "sequential", num_replicas=2, rank=rank)
callbacks = [ModelCheckpoint(dirpath=run, save_top_k=0, save_last=True), PreemptionCheckpoint()]
if mode == "stop" and rank == 1:
    callbacks.append(SignalAfterBackward(signal.SIGTERM, 5))
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="accel_ddp", max_steps=6, accumulate_grad_batches=4,
    logger=False, enable_progress_bar=False, enable_model_summary=False,
    default_root_dir=str(run), callbacks=callbacks,
)
model = TinyRegression()
try:
    resume = run / "last.ckpt" if mode == "resume" else None
    trainer.fit(model, ResumableDataLoader(data, sampler, batch_size=2), ckpt_path=resume)
finally:
    (run / f"{mode}-rank-{rank}.step").write_text(str(trainer.global_step))
if rank == 0:
    torch.save(model.state_dict(), run / f"{mode}.weights")
"""


def test_a_sigterm_inside_an_accumulation_window_stops_every_rank_after_it_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    """Without waiting for the window's optimizer step, both ranks stop after batch 6 and the
    resumed run ends with other weights."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env |= {**TEST_IMPORTS, "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"}
    env |= {"LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "accumulating"}
    rank_envs = [{"RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in (0, 1)]
    whole, run = tmp_path / "whole", tmp_path / "run"
    for mode, directory in (("whole", whole), ("stop", run), ("resume", run)):
        directory.mkdir(exist_ok=True)
        env["MASTER_PORT"] = str(free_port())
        arguments = [DDP_ACCUMULATING_RANK, str(directory), mode]
        returncodes, errors = _two_ranks(arguments, env, rank_envs)
        assert returncodes == [0, 0], errors
    # the window of batches 4-7 is the second optimizer step
    assert [(run / f"stop-rank-{rank}.step").read_text() for rank in (0, 1)] == ["2", "2"]
    assert load_data_file(run / "last.ckpt")["global_step"] == 2
    expected = torch.load(whole / "whole.weights", weights_only=True)
    resumed = torch.load(run / "resume.weights", weights_only=True)
    _assert_same_weights(resumed, expected)


# Two ranks of a drop-in Trainer as SLURM starts them (one task per rank, the job's
# variables), Lightning requeueing the job on SIGUSR1; rank 1 alone receives the signal
# after step 5, as a signal to one task would arrive
SLURM_RANK = """
import atexit, os, signal, sys
from pathlib import Path
import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from helpers import TinyRegression
import lightning_accel

out = Path(sys.argv[1])
# run after the handlers the strategy registers (last registered, first run)
atexit.register(
    lambda: (out / f"rank-{os.environ['SLURM_PROCID']}.group-open-at-exit").write_text(
        str(torch.distributed.is_initialized())
    )
)

class RequeueSignalAndRecordSaves(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 5 and trainer.global_rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        with (out / f"rank-{trainer.global_rank}.saves").open("a") as record:
            record.write(f"{trainer.global_step}\\n")

torch.manual_seed(0)
x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
data = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8
)
trainer = pl.Trainer(
    accelerator="cpu", devices=2, strategy="accel_ddp",
    plugins=[SLURMEnvironment(auto_requeue=True)], max_steps=10, logger=False,
    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    default_root_dir=str(out), callbacks=[RequeueSignalAndRecordSaves()],
)
trainer.fit(TinyRegression(), train_dataloaders=data)
"""


def test_slurms_requeue_signal_to_one_rank_saves_every_rank_at_one_step_and_requeues_once(
    tmp_path: Path,
) -> None:
    """Lightning saves from inside the signal handler of rank 1 alone: a collective rank 0
    does not make, in the middle of a step (without AgreedStop both ranks hang here)."""
    bin_dir = _fake_scontrol(tmp_path)
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "127.0.0.1"}
    slurm |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    base |= {**TEST_IMPORTS, **slurm, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    returncodes, errors = _two_ranks(
        [SLURM_RANK, str(tmp_path)],
        base,
        [{"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)} for rank in (0, 1)],
    )
    assert returncodes == [0, 0], errors
    # the signal during step 5 is combined in step 6 and acted on before step 7, on both
    saves = [(tmp_path / f"rank-{rank}.saves").read_text().split() for rank in (0, 1)]
    assert saves == [["6"], ["6"]]
    assert load_data_file(tmp_path / "hpc_ckpt_1.ckpt")["global_step"] == 6
    assert (tmp_path / "scontrol.calls").read_text().split("\n") == ["requeue 4242", ""]
    # closed while the interpreter ran: gloo's threads left to its teardown aborted a rank
    # (SIGABRT) now and then, after its work was done
    for rank in (0, 1):
        assert (tmp_path / f"rank-{rank}.group-open-at-exit").read_text() == "False"


def _sweep_record(sweep_dir: Path, sweeper: str) -> None:
    sweep_dir.mkdir(parents=True)
    hydra = {
        "sweeper": {"_target_": sweeper},
        "overrides": {
            "hydra": [
                "hydra.mode=MULTIRUN",
                f"hydra.sweep.dir={sweep_dir}",
                "hydra.verbose=1",
            ],
            "task": ["seed=1,2,3", "trainer.max_steps=40"],
        },
    }
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def test_a_stopped_job_of_a_sweep_names_the_command_that_goes_on_with_the_sweep(
    tmp_path: Path,
) -> None:
    """The job's own command resumed that job alone, and the jobs after it never ran."""
    from lightning_accel.cli.compose import parse_overrides
    from lightning_accel.cli.hydra_private import BASIC_SWEEPER
    from lightning_accel.cli.runner import resume_note
    from lightning_accel.cli.sweep_resume import sweep_resume_command

    sweep = tmp_path / "sweep, 1"  # quoted where Hydra would misread it
    _sweep_record(sweep, BASIC_SWEEPER)
    job = sweep / "1"
    (job / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 7, "state_dict": {}}, job / "checkpoints" / "last.ckpt")
    command = sweep_resume_command(job)
    assert command is not None
    *words, directory = shlex.split(command)
    assert words == ["lightning-accel", "train", "--multirun", "seed=1,2,3"] + [
        "trainer.max_steps=40",
        "hydra.verbose=1",
    ]
    (given,) = parse_overrides([directory])
    assert (given.key_or_group, given.value()) == ("hydra.sweep.dir", str(sweep))
    assert resume_note(job) == (
        f"its last checkpoint is {job / 'checkpoints' / 'last.ckpt'}; `{command}` goes on with "
        "the sweep: it keeps the finished jobs, resumes this job from it"
    )
    (job / "checkpoints" / "last.ckpt").unlink()
    assert resume_note(job).endswith("it keeps the finished jobs, starts this job again")
    search = tmp_path / "search"
    _sweep_record(search, "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert sweep_resume_command(search / "0") is None, "a search's sampler would not repeat"
    assert sweep_resume_command(tmp_path / "alone") is None
