"""Helpers shared by the tests: tiny-run overrides and a CLI runner."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from filelock import FileLock

from lightning_accel.callbacks.fault_injection import KillRank
from lightning_accel.checkpoints import run_weights
from lightning_accel.cli.command_server import CommandServer
from lightning_accel.cli.compose import compose_job
from lightning_accel.cli.preflight import validated_run
from lightning_accel.cli.schema import RunConfig
from lightning_accel.models import GPTLanguageModel

REPO = Path(__file__).resolve().parent.parent
# A tiny model and a few steps: end-to-end runs in seconds.
TINY = [
    "trainer=smoke",
    "model.n_layer=1",
    "model.d_model=32",
    "model.n_head=2",
    "data.seq_len=32",
    "data.batch_size=8",
]


def trained(
    cwd: Path, args: list[str]
) -> tuple[subprocess.CompletedProcess, dict[str, Any], dict[str, Any]]:
    """Run ``lightning-accel`` with ``args`` (a ``train`` whose run directory is ``out``) in
    ``cwd``: the process, its ``summary.json`` and the ``optimization`` of its config.yaml."""
    result = run_cli(args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((cwd / "out" / "summary.json").read_text())
    config = yaml.safe_load((cwd / "out" / "config.yaml").read_text())["optimization"]
    return result, summary, config


def composed_run(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The validated config of a short tiny run (minimal callbacks, no logger, 6 steps) with
    ``overrides``, composed as ``train`` composes it, its run directory ``run_dir``."""
    job = [*TINY, "callbacks=minimal", "logger=none", "trainer.max_steps=6", *overrides]
    return validated_run(compose_job(job), run_dir)


# the hardware profiles, as error messages and help list them
HARDWARE_PROFILES = (
    "auto, cpu, ddp, ddp_cpu, fsdp2, fsdp2_cpu, fsdp2_tp, fsdp2_tp_cpu, hsdp, hsdp_cpu, "
    "tp, tp_cpu, tpu, tpu_spmd, xla_cpu, xla_cpu_spmd"
)


def free_port() -> int:
    """A TCP port of this machine that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_command() -> list[str]:
    """The installed console script of the environment running the tests."""
    script = Path(sys.executable).parent / "lightning-accel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_accel"]


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: float = 240,
    env: dict[str, str] | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``lightning-accel ARGS``, capturing its output: forked from a
    :class:`~lightning_accel.cli.command_server.CommandServer` (torch and Lightning already
    imported) or, with ``fresh``, as a new process started as the console script."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if fresh:
        return subprocess.run(
            [*cli_command(), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    output = Path(tempfile.mkdtemp(prefix="command-"))
    try:
        # the console width the tests read output at, from the first import on
        server = CommandServer.shared({**os.environ, "COLUMNS": "200"})
        status = server.run(args, cwd, env, output / "stdout", output / "stderr", timeout)
        stdout, stderr = ((output / name).read_text() for name in ("stdout", "stderr"))
    finally:
        shutil.rmtree(output)
    return subprocess.CompletedProcess(args, status, stdout, stderr)


# a 2-rank run of a one-layer GPT that trains until it is stopped
TINY_LONG_RUN = [
    "train",
    "model.n_layer=1",
    "model.d_model=32",
    "model.n_head=2",
    "data.seq_len=32",
    "data.batch_size=4",
    "trainer.max_steps=100000",
    "trainer.val_check_interval=1000",
    "callbacks=minimal",
    "logger=none",
]


def start_long_run(
    directory: Path, *extra: str, hardware: str = "ddp_cpu", own_session: bool = False
) -> subprocess.Popen:
    """Start :data:`TINY_LONG_RUN` on ``hardware`` in ``directory``, each rank marking there
    when it trains (:class:`MarkTraining`); ``own_session``: the command leads a process
    group of its own, which a test can signal whole, and takes SIGINT as from a terminal
    (a test started in the background would pass it on ignored)."""
    mark = [
        "+callbacks.mark._target_=helpers.MarkTraining",
        f"+callbacks.mark.directory={directory}",
    ]
    return subprocess.Popen(
        [*cli_command(), *TINY_LONG_RUN, f"hardware={hardware}", *mark, *extra],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **TEST_IMPORTS, "COLUMNS": "200"},
        start_new_session=own_session,
        preexec_fn=_default_sigint if own_session else None,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_training(directory: Path, ranks: int = 2, timeout: float = 120) -> None:
    """Until every rank has made two optimizer steps (:class:`MarkTraining`)."""
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("rank-*.training"))) < ranks:
        assert time.monotonic() < deadline, "the ranks never started training"
        time.sleep(0.2)


def rank_process(directory: Path, rank: int) -> int:
    """The process id of rank ``rank``, once it has started training (:class:`MarkTraining`)."""
    return int((directory / f"rank-{rank}.training").read_text())


def wait_until_exited(pid: int, timeout: float = 60) -> None:
    """Until process ``pid`` has exited (gone, or a zombie its parent has not reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state == "Z":
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not exit")


class LazyImageClassifier(pl.LightningModule):
    """An image classifier whose layers take their input sizes at the first batch
    (``nn.LazyConv2d``, ``nn.LazyLinear``), as some users' models do."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.LazyConv2d(8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.LazyLinear(num_classes),
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(self.net(images), labels)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def refusal(argv: list[str], capsys: pytest.CaptureFixture, code: int = 2) -> str:
    """The one line ``lightning-accel ARGV``, run in this process, refuses its input with:
    exit ``code`` (2: bad input) and one ``lightning-accel: error:`` sentence are asserted."""
    from lightning_accel.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightning-accel: error: "), lines
    return lines[0]


class GPTWithSpareLayer(GPTLanguageModel):
    """The pack's GPT with a layer its loss never uses (a head kept for later), which DDP
    waits for unless told to look for unused parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spare = torch.nn.Linear(4, 4)


class CheckedGPT(GPTLanguageModel):
    """The pack's GPT behind a user's own check of its settings (a ValueError), made after
    work the meta device cannot do when ``meta_first``, so that only the run itself builds
    it."""

    def __init__(self, max_width: int = 1024, meta_first: bool = False, **kwargs: Any) -> None:
        if meta_first:
            torch.ones(1).item()  # RuntimeError on the meta device
        if kwargs["d_model"] > max_width:
            raise ValueError(f"d_model={kwargs['d_model']} is wider than {max_width}")
        super().__init__(**kwargs)


class MissingPackageLogger:
    """A logger whose backing package is absent, as TensorBoard's is without the extra."""

    def __init__(self, save_dir: str, name: str, version: str) -> None:
        raise ModuleNotFoundError("No module named 'fancy_tracker'", name="fancy_tracker")


class BlocklessModule(pl.LightningModule):
    """A model with no repeated blocks, for activation checkpointing to refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)


class KillOnce(pl.Callback):
    """SIGKILLs global rank ``rank`` after ``step`` optimizer steps, in the first attempt
    only (torch elastic counts restarts in ``TORCHELASTIC_RESTART_COUNT``): a worker dying
    mid-training."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class KillParentInAttempt(pl.Callback):
    """SIGKILLs the process that started global rank ``rank`` (under ``launcher=ray``, the
    rank's Ray worker) after ``step`` optimizer steps of restart ``attempt``: a worker
    process dying under its rank."""

    def __init__(self, step: int, attempt: int, rank: int = 1) -> None:
        self.step, self.attempt, self.rank = step, attempt, rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        chosen = trainer.global_step == self.step and trainer.global_rank == self.rank
        if attempt == self.attempt and chosen:
            os.kill(os.getppid(), signal.SIGKILL)


class MarkTraining(pl.Callback):
    """Writes ``<directory>/rank-<N>.training`` (holding the rank's process id) once rank N
    has made ``step`` optimizer steps: tests wait for it instead of guessing how long
    start-up takes."""

    def __init__(self, directory: str, step: int = 2) -> None:
        self.directory, self.step = Path(directory), step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            mark = self.directory / f"rank-{trainer.global_rank}.training"
            mark.with_suffix(".tmp").write_text(str(os.getpid()))
            mark.with_suffix(".tmp").replace(mark)  # whole when it appears


class RecordProcessState(pl.Callback):
    """Appends torch's float32 matmul precision and cuDNN autotuning setting at the start of
    training to ``path``, a line per fit."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, *args: object) -> None:
        with self.path.open("a") as record:
            precision = torch.get_float32_matmul_precision()
            record.write(f"{precision},{torch.backends.cudnn.benchmark}\n")


class InterruptAt(pl.Callback):
    """Ctrl-C before the batch that would take the run to ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


class StopAtStep(pl.Callback):
    """Ends training after ``step`` optimizer steps, as a preempted job would stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class SignalAtStep(pl.Callback):
    """Sends ``signum`` (default SIGTERM) to its own process once rank ``rank`` has made
    ``step`` optimizer steps, as a scheduler preempting one rank would (SIGINT: Ctrl-C)."""

    def __init__(self, step: int, rank: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.rank, self.signum = step, rank, signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            if self.signum == signal.SIGINT:
                # what Python's handler raises for Ctrl-C, also where the test itself was
                # started in the background (which ignores the signal)
                raise KeyboardInterrupt
            os.kill(os.getpid(), self.signum)


class CtrlCInEvaluation(pl.Callback):
    """Raises what Python's handler raises for Ctrl-C at the first batch of validate, test
    or predict."""

    def on_validation_batch_start(self, *args: object) -> None:
        raise KeyboardInterrupt

    on_test_batch_start = on_predict_batch_start = on_validation_batch_start


class SignalAfterBackward(pl.Callback):
    """Sends ``signum`` to its own process after the backward of batch ``batch`` of the first
    epoch: in the middle of a step."""

    def __init__(self, signum: signal.Signals, batch: int) -> None:
        self.signum, self.batch = signum, batch

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        if loop.epoch_loop.batch_idx == self.batch and loop.epoch_progress.current.ready == 1:
            os.kill(os.getpid(), self.signum)


class RecordStop(pl.Callback):
    """Writes ``<directory>/rank-<N>.stopped`` holding the step at which rank N's training
    ended on an exception (a stop on SIGTERM)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_exception(self, trainer: pl.Trainer, *args: object) -> None:
        (self.directory / f"rank-{trainer.global_rank}.stopped").write_text(
            str(trainer.global_step)
        )


class CountBroadcasts(pl.Callback):
    """Counts this rank's ``torch.distributed.broadcast`` calls while it trains, into
    ``<directory>/rank-<N>.broadcasts``."""

    def __init__(self, directory: str) -> None:
        self.directory, self.calls = Path(directory), 0

    def on_train_start(self, trainer: pl.Trainer, *args: object) -> None:
        original = torch.distributed.broadcast

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        self._original, torch.distributed.broadcast = original, counted

    def on_train_end(self, trainer: pl.Trainer, *args: object) -> None:
        torch.distributed.broadcast = self._original
        (self.directory / f"rank-{trainer.global_rank}.broadcasts").write_text(str(self.calls))


class HangAtStart(pl.Callback):
    """Stops for ``seconds`` before the first training step, as a hung rank would; with
    ``pid_dir``, first writes a file named after its process id there, so that a test can
    check the process has gone."""

    def __init__(self, seconds: float, pid_dir: str | None = None) -> None:
        self.seconds, self.pid_dir = seconds, pid_dir

    def on_train_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.pid_dir is not None:
            (Path(self.pid_dir) / str(os.getpid())).touch()
        time.sleep(self.seconds)


class FullDisk(pl.Callback):
    """Makes every file system look ``free`` bytes free to the pack in the process it runs
    in (each rank builds its own), as a disk filled by another job would."""

    def __init__(self, free: int = 4096) -> None:
        self.free = free

    def setup(self, *args: object, **kwargs: object) -> None:
        from lightning_accel import files

        files.free_bytes = lambda path: self.free


TESTS = Path(__file__).resolve().parent
# Lets CLI subprocesses (and their ranks) import test-only classes such as StopAtStep.
TEST_IMPORTS = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
}


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A Lightning Trainer on the CPU that writes and prints nothing of its own: no logger,
    checkpoints, progress bar, model summary or sanity validation; ``options`` add to those
    or replace them."""
    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**quiet, **options})


class TinyRegression(pl.LightningModule):
    """Two linear layers fitting the sum of 8 inputs: a Lightning run in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layers(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def held_out_split(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out inputs and targets of :class:`HeldOutSplitData`."""
    inputs = torch.randn(samples, 8, generator=torch.Generator().manual_seed(1))
    return inputs, inputs.sum(1, keepdim=True)


class HeldOutSplitData(pl.LightningDataModule):
    """A user's DataModule of plain DataLoaders, which Lightning gives its own distributed
    samplers on several ranks: ``samples`` held out for validation and predict."""

    def __init__(self, samples: int = 37, batch_size: int = 4) -> None:
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        inputs = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(*held_out_split(self.samples))
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return self.val_dataloader()


class EvaluatedRegression(TinyRegression):
    """:class:`TinyRegression` validating (its squared errors and the samples it saw, each
    summed over batches and ranks) and predicting (its outputs)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        errors = (self(inputs) - targets).square().sum()
        self.log("val/sum_squared_error", errors, reduce_fx="sum", sync_dist=True)
        self.log("val/samples", float(len(inputs)), reduce_fx="sum", sync_dist=True)

    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"prediction": self(batch[0]).squeeze(1)}


class LoggingRegression(TinyRegression):
    """:class:`TinyRegression` logging its training loss as ``train/loss``, as the pack's
    models do."""

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


class PlateauRegression(LoggingRegression):
    """A user's module whose ReduceLROnPlateau scheduler monitors a metric it never logs."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        schedule = {"scheduler": scheduler, "monitor": "train/losss", "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def fit_tiny(
    run_dir: str | Path, max_steps: int, kill_saving_step: int | None = None, resume: bool = False
) -> dict[str, torch.Tensor]:
    """Fit :class:`TinyRegression` with the pack's Trainer, saving ``last.ckpt`` every 2 steps
    (2 batches per epoch, no shuffling); returns the final weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_accel import build_trainer

    pl.seed_everything(0, verbose=False)
    checkpoints = Path(run_dir) / "checkpoints"
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=2, save_top_k=0, save_last=True)
    ]
    if kill_saving_step is not None:
        callbacks.append(KillRank("checkpoint_write", kill_saving_step))
    trainer = build_trainer(
        "cpu",
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=generator)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16
    )
    model = TinyRegression()
    ckpt_path = str(checkpoints / "last.ckpt") if resume else None
    trainer.fit(model, train_dataloaders=data, ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _CreatesFileWhenUnpickled:
    """Unpickles into ``os.system("touch MARKER")``: the payload of a crafted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def write_crafted_checkpoint(path: Path, marker: Path, plain_pickle: bool = False) -> None:
    """Write a file that creates ``marker`` when loaded without ``weights_only``: a
    ``torch.save`` archive (a checkpoint file, ``meta.pt``) or, with ``plain_pickle``, a
    bare pickle (the ``.metadata`` index torch's distributed checkpoint unpickles)."""
    import pickle

    payload = {"state_dict": {}, "global_step": _CreatesFileWhenUnpickled(marker)}
    if plain_pickle:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)


class ForwardOnlyData(pl.LightningDataModule):
    """A user's DataModule that cannot describe a batch without reading its data."""

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(torch.randn(16, 8), torch.randn(16, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)


class EmptyData(ForwardOnlyData):
    """A user's DataModule whose training data has no batches."""

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.empty(0, 8)))


class ExampleInputRegression(TinyRegression):
    """A user's module that describes its input the Lightning way: ``example_input_array``."""

    def __init__(self, width: int = 16, batch: int = 4) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(8, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
        )
        self.example_input_array = torch.zeros(batch, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AllocatingModule(TinyRegression):
    """A module that creates a weight on the CPU explicitly, whatever the default device."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(4, 4, device="cpu"))


class MetaHostileModule(TinyRegression):
    """A module whose constructor reads a tensor's value, which the meta device has not."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = float(torch.ones(1).sum().item())


# What a user of the README's quick start "your own module" would have written: my_pkg.MyModule
USERS_PACKAGE = """
import lightning.pytorch as pl
import torch


class MyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class MyData(pl.LightningDataModule):
    def train_dataloader(self):
        x = torch.randn(64, 8)
        data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
        return torch.utils.data.DataLoader(data)
"""


# Parallel runs through the CLI: one small GPT, the same global batch whatever the layout.
# Accumulating 2 micro-batches per step: an epoch of 20 micro-batches holds the same 10 steps.
ACCUMULATE = ["optimization.accumulate_grad_batches=2", "trainer.limit_train_batches=20"]
MODEL = {"n_layer": 2, "d_model": 32, "n_head": 2}
SHAPE = [*(f"model.{k}={v}" for k, v in MODEL.items()), "data.seq_len=32"]
GLOBAL_BATCH = 8
# 2 epochs of 10 steps, validation (and a checkpoint, all kept: step-5.ckpt ... step-20.ckpt)
# every 5.
LOOP = [
    "trainer.max_steps=20",
    "trainer.limit_train_batches=10",
    "trainer.val_check_interval=5",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks=minimal",
    "callbacks.checkpoint.save_top_k=-1",
]


class Runs:
    """Runs the CLI once per configuration (a small GPT, 2 epochs of 10 steps) and reads
    back its outputs."""

    def __init__(self, root: Path, corpus: Path) -> None:
        self.root = root
        self.corpus = corpus
        self.base = ["train", *SHAPE, f"data.source={corpus}"]

    def train(
        self, name: str, hardware: str, ranks: int, *extra: str, data_parallel: int | None = None
    ) -> Path:
        """Train (once) on ``ranks`` ranks, ``data_parallel`` of which (default all) see
        different data, with the global batch split between those."""
        run_dir = self.root / name
        # sessions sharing the runs: the first to need one trains it, the others wait
        with FileLock(self.root / f"{name}.lock"):
            if not (run_dir / "summary.json").exists():
                args = self.arguments(name, hardware, ranks, *extra, data_parallel=data_parallel)
                result = run_cli(args, cwd=self.root, timeout=300, env=TEST_IMPORTS)
                assert result.returncode == 0, result.stderr[-3000:]
        return run_dir

    def arguments(
        self, name: str, hardware: str, ranks: int, *extra: str, data_parallel: int | None = None
    ) -> list[str]:
        """The command line :meth:`train` runs."""
        batch = GLOBAL_BATCH // (data_parallel or ranks)
        args = [*self.base, *LOOP, f"hardware={hardware}", f"hardware.devices={ranks}"]
        return [*args, f"data.batch_size={batch}", f"hydra.run.dir={self.root / name}", *extra]

    @staticmethod
    def checkpoint(run_dir: Path, step: int) -> Path:
        """The checkpoint a run saved after ``step`` steps (at its validation)."""
        return run_dir / "checkpoints" / f"step-{step}.ckpt"

    @staticmethod
    def losses(run_dir: Path) -> dict[int, float]:
        with (run_dir / "metrics.csv").open() as handle:
            return {
                int(r["step"]): float(r["train/loss"])
                for r in csv.DictReader(handle)
                if r["train/loss"]
            }

    @staticmethod
    def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
        """The weights of a run's last checkpoint (a sharded one consolidated first)."""
        return run_weights(run_dir)

    @staticmethod
    def summary(run_dir: Path) -> dict:
        return json.loads((run_dir / "summary.json").read_text())


def max_difference(a: dict[int, float], b: dict[int, float]) -> float:
    """The largest difference between two runs' losses at the steps both logged."""
    steps = sorted(set(a) & set(b))
    return max(abs(a[s] - b[s]) for s in steps)


class SeparateProjectionAttention(torch.nn.Module):
    """Attention with one layer each for query, key, value and output (Llama-style)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.out = (
            torch.nn.Linear(width, width, bias=False) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape[:2]
        q, k, v = (
            p(x).view(batch, length, self.num_heads, -1).transpose(1, 2)
            for p in (self.q, self.k, self.v)
        )
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))


class GatedMLP(torch.nn.Module):
    """A SwiGLU MLP: gate and up projections, then a down projection."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(width, 2 * width, bias=False)
        self.up = torch.nn.Linear(width, 2 * width, bias=False)
        self.down = torch.nn.Linear(2 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class UserBlock(torch.nn.Module):
    """A pre-norm transformer layer as users write them: RMSNorm, attention, gated MLP."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.attention_norm = torch.nn.RMSNorm(width)
        self.attention = SeparateProjectionAttention(width, num_heads)
        self.ffn_norm = torch.nn.RMSNorm(width)
        self.feed_forward = GatedMLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class UserTransformer(torch.nn.Module):
    """Embedding, :class:`UserBlock` layers, a norm and an output layer; no TP plan of its own."""

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.layers = torch.nn.ModuleList(UserBlock(width, num_heads) for _ in range(depth))
        self.norm = torch.nn.RMSNorm(width)
        self.output = torch.nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


class UserLanguageModel(GPTLanguageModel):
    """The pack's language-model training loop around a user's :class:`UserTransformer`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hp = self.hparams
        self.model = UserTransformer(hp.vocab_size, hp.d_model, hp.n_layer, hp.n_head)


class RankZeroLogsOnce(GPTLanguageModel):
    """The GPT whose rank 0 alone logs a value with ``sync_dist`` at step 3: a collective
    the other ranks never make."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.global_step == 3 and self.global_rank == 0:
            self.log("rank_zero_only", loss.detach(), sync_dist=True)
        return loss


class TrainOnlyLanguageModel(GPTLanguageModel):
    """The GPT without test and predict steps, as a user's module that only trains."""

    test_step = pl.LightningModule.test_step
    predict_step = pl.LightningModule.predict_step
