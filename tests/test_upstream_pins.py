"""The private upstream code the package relies on, pinned: a Lightning or Hydra upgrade that
changes any of it fails here, by name, instead of changing a run's behaviour unnoticed."""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_accel.callbacks.progress import RunProgressBar
from lightning_accel.cli import hydra_private
from lightning_accel.cli.compose import parse_overrides


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _code_digest(function: Callable[..., Any]) -> str:
    """A digest of ``function``'s code that ignores comments and layout."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def test_fsdp2_setup_follows_the_model_parallel_setup_it_restates() -> None:
    # FSDP2Strategy.setup restates this method (which refuses a LightningModule without
    # configure_model); when it changes, carry the change over and update the digest
    assert _code_digest(ModelParallelStrategy.setup) == "5d7b9d1fe4f45db3"


def test_the_model_parallel_process_group_starts_with_get_process_group_backend() -> None:
    # FSDP2Strategy overrides it to reduce CPU-offloaded gradients over gloo
    assert _parameters(ModelParallelStrategy._get_process_group_backend) == ["self"]
    setup = inspect.getsource(ModelParallelStrategy._setup_distributed)
    assert "self._process_group_backend = self._get_process_group_backend()" in setup


def test_the_progress_bar_label_comes_from_get_train_description() -> None:
    assert _parameters(RichProgressBar._get_train_description) == ["self", "current_epoch"]
    assert "self._get_train_description(" in inspect.getsource(RichProgressBar)


def test_the_progress_bar_reads_metrics_at_logging_steps_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = []
    monkeypatch.setattr(
        RichProgressBar, "get_metrics", lambda self, trainer, module: reads.append(1) or {}
    )
    bar = RunProgressBar()
    loss = {"train/loss": torch.tensor(2.0)}
    for step in range(6):
        trainer = SimpleNamespace(
            training=True, global_step=step, log_every_n_steps=5, callback_metrics=loss
        )
        bar.get_metrics(trainer, None)
    assert len(reads) == 2, "at steps 0 and 5"
    bar.get_metrics(SimpleNamespace(training=False, global_step=6, log_every_n_steps=5), None)
    assert len(reads) == 3, "validation always reads"


def test_the_speed_monitor_asks_lightning_whether_validation_follows_a_batch() -> None:
    # SpeedMonitor pauses its clocks in on_train_batch_end when this test holds: it must
    # still take the data fetcher, be what on_advance_end asks, and read nothing that
    # changes between on_train_batch_end and on_advance_end
    from lightning.pytorch.loops import _FitLoop, _TrainingEpochLoop

    assert _parameters(_TrainingEpochLoop._should_check_val_fx) == ["self", "data_fetcher"]
    assert _code_digest(_TrainingEpochLoop._should_check_val_fx) == "0b5d85af6cf6d79d"
    advance_end = inspect.getsource(_TrainingEpochLoop.on_advance_end)
    assert "should_check_val = self._should_check_val_fx(data_fetcher)" in advance_end
    assert "_data_fetcher" in inspect.getsource(_FitLoop)


def test_hydra_locates_targets_with_locate() -> None:
    from hydra._internal.utils import _locate

    assert _parameters(_locate) == ["path"]
    assert hydra_private.locate("pathlib.Path") is Path


def test_hydra_parses_its_command_line_with_get_args_parser() -> None:
    from hydra._internal.utils import get_args_parser

    assert _parameters(get_args_parser) == []
    options = hydra_private.command_line_parser().parse_args(["-m", "a=1,2"])
    assert options.multirun and options.overrides == ["a=1,2"]
    for read in ("help", "hydra_help", "info", "shell_completion", "config_dir", "cfg", "package"):
        assert hasattr(options, read), read


def test_hydra_expands_sweeps_with_the_basic_sweeper() -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

    assert _parameters(BasicSweeper.split_arguments) == ["overrides", "max_batch_size"]
    assert hydra_private.locate(hydra_private.BASIC_SWEEPER) is BasicSweeper
    assert hydra_private.BASIC_SWEEPER == BasicSweeperConf._target_
    parsed = parse_overrides(["a=1,2", "b=x", "c=3,4"])
    assert hydra_private.sweep_jobs(parsed) == [
        ["a=1", "b=x", "c=3"],
        ["a=1", "b=x", "c=4"],
        ["a=2", "b=x", "c=3"],
        ["a=2", "b=x", "c=4"],
    ]


def test_private_torch_and_lightning_attributes_read_by_the_package() -> None:
    # collective_trace reads the strategies' timeout, speed the compiled forward, sharding
    # the module inside torch's checkpoint wrapper
    from lightning.pytorch.strategies import DDPStrategy
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    assert hasattr(DDPStrategy(), "_timeout") and hasattr(ModelParallelStrategy(), "_timeout")
    linear = torch.nn.Linear(1, 1)
    assert getattr(linear, "_compiled_call_impl", False) is None
    assert checkpoint_wrapper(linear)._checkpoint_wrapped_module is linear


def test_a_refused_command_stops_the_rank_server_it_started_new_or_forked() -> None:
    # stop_rank_server kills the server through multiprocessing.forkserver's private
    # _forkserver, _forkserver_pid and _stop; a later start must start a new one. A forked
    # server (start_rank_server(forked=True)) is started through multiprocessing.util's
    # undocumented spawnv_passfds, overridden: its ranks have this process's state (here a
    # recursion limit a new interpreter would not have)
    probe = (
        "import os, sys\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import forkserver, get_context\n"
        "from lightning_accel.cli.rank_server import start_rank_server, stop_rank_server\n"
        "pids, limits = [], []\n"
        "sys.setrecursionlimit(4321)\n"
        "for forked in (False, False, True):\n"
        "    start_rank_server(forked)\n"
        "    pids.append(forkserver._forkserver._forkserver_pid)\n"
        "    if forked:\n"
        "        with ProcessPoolExecutor(1, mp_context=get_context('forkserver')) as ranks:\n"
        "            limits.append(ranks.submit(sys.getrecursionlimit).result())\n"
        "    stop_rank_server()\n"
        "    assert forkserver._forkserver._forkserver_pid is None\n"
        "print(*pids, *limits)\n"
    )
    env = {**os.environ, "LIGHTNING_ACCEL_DEFER_IMPORTS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    *pids, limit = (int(word) for word in result.stdout.split())
    assert len(set(pids)) == 3
    assert limit == 4321, "a rank of the forked server has the state of the process it forked"
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # reaped, not left running
            os.kill(pid, 0)


def test_the_run_checkpoint_saves_last_through_model_checkpoints_own_steps() -> None:
    # RunCheckpoint.on_train_end calls these as ModelCheckpoint's own hooks do
    from lightning.pytorch.callbacks import ModelCheckpoint

    assert _parameters(ModelCheckpoint._should_skip_saving_checkpoint) == ["self", "trainer"]
    assert _parameters(ModelCheckpoint._should_save_on_train_epoch_end) == ["self", "trainer"]
    assert _parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]
    assert _parameters(ModelCheckpoint._save_last_checkpoint) == [
        "self",
        "trainer",
        "monitor_candidates",
    ]


def test_the_run_csv_logger_builds_its_writer_as_csv_logger_does() -> None:
    # RunCSVLogger.experiment restates CSVLogger.experiment with its own writer, whose
    # _check_log_dir_exists the writer's __init__ calls (where Lightning deletes the file)
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter
    from lightning.pytorch.loggers import CSVLogger

    assert _code_digest(CSVLogger.experiment.fget) == "d27f890ed57837bd"
    assert "self._check_log_dir_exists()" in inspect.getsource(_ExperimentWriter.__init__)


def test_the_wandb_logger_hands_wandb_init_its_arguments_from_wandb_init() -> None:
    # RunWandbLogger drops the anonymous=None that Lightning puts there
    from lightning.pytorch.loggers import WandbLogger

    assert WandbLogger(offline=True)._wandb_init["anonymous"] is None


def test_exact_resume_restates_checkpoints_for_the_restart_rules_it_was_written_for() -> None:
    # ExactResume rewrites an epoch-end checkpoint's loop counters into the state these
    # rules resume with the next epoch; when any changes, re-run the resume parity tests
    # (tests/test_exact_resume.py, tests/test_checkpoints.py) and update the digests
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    assert {
        name: _code_digest(function)
        for name, function in {
            "fit.update_restart_stage": _FitLoop.update_restart_stage,
            "fit.reset": _FitLoop.reset,
            "fit.restarting": _FitLoop.restarting.fset,
            "fit._iteration_based_training": _FitLoop._iteration_based_training,
            "epoch.update_restart_stage": _TrainingEpochLoop.update_restart_stage,
            "epoch.reset": _TrainingEpochLoop.reset,
        }.items()
    } == {
        "fit.update_restart_stage": "2098623741c06303",
        "fit.reset": "3a036c4c31255e16",
        "fit.restarting": "6b397c3747cfc62f",
        "fit._iteration_based_training": "872773fedbef351c",
        "epoch.update_restart_stage": "e8f3ffd8cf83c8a9",
        "epoch.reset": "eec15d914fda4529",
    }
