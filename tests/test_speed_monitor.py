"""The speed monitor: throughput covers training steps only (validation and checkpoint
saving, which grows with the model and dominated GPU step times before, are left out), data
wait, FLOPs and MFU arithmetic, peak figures per device, interval logging without per-step
synchronization."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import LoggingRegression
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel import devices, flops, memory
from lightning_accel.callbacks import RunProgressBar, RunSummary, SpeedMonitor
from lightning_accel.callbacks import speed as speed_module
from lightning_accel.data import SyntheticTokenDataModule
from lightning_accel.models import GPTLanguageModel

SLOW_SAVE_SECONDS = 1000.0


class FakeClock:
    """``time`` for the throughput clock: real time plus whatever slow work has added."""

    def __init__(self) -> None:
        self.offset = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.offset

    def process_time(self) -> float:
        return time.process_time()


class SlowCheckpoint(ModelCheckpoint):
    """A checkpoint callback whose every save takes SLOW_SAVE_SECONDS on the fake clock."""

    def __init__(self, clock: FakeClock, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.clock = clock

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.clock.offset += SLOW_SAVE_SECONDS
        super()._save_checkpoint(trainer, filepath)


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SlowToStartLoader(DataLoader):
    """A loader whose every iterator takes SLOW_SAVE_SECONDS to start on the fake clock, as
    a GPU machine's loader workers take a fraction of a second to start."""

    def __init__(self, clock: FakeClock, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def __iter__(self):  # noqa: ANN204 (DataLoader's own iterator type)
        self.clock.offset += SLOW_SAVE_SECONDS
        return super().__iter__()


@pytest.mark.parametrize("slow", ["checkpoint save", "validation loader start"])
@pytest.mark.parametrize("validate_every", [4, None], ids=["within-epoch", "epoch-end"])
def test_what_comes_with_validation_is_not_training_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str, validate_every: int | None
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(devices, "time", clock)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = DataLoader(data, batch_size=4)
    directory = tmp_path / "checkpoints"
    if slow == "checkpoint save":
        validation = loader
        checkpoint = SlowCheckpoint(clock, dirpath=directory, save_last=True)
    else:  # Lightning starts the loader's iterator before on_validation_start
        validation = SlowToStartLoader(clock, data, batch_size=4)
        checkpoint = ModelCheckpoint(dirpath=directory)
    summary = RunSummary(output_dir=str(tmp_path), print_table=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        val_check_interval=validate_every,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[checkpoint, SpeedMonitor(warmup_steps=2), summary],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), loader, validation)

    assert clock.offset >= 2 * SLOW_SAVE_SECONDS, f"each {slow} took its (fake) time"
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["measured_steps"] == 2 * len(loader) - 2
    assert written["step_seconds"] * written["measured_steps"] < SLOW_SAVE_SECONDS / 10


@pytest.mark.parametrize(
    ("warmup_steps", "validate_every"),
    [(2, None), (20, 2)],  # measured after a warm-up; over all steps, with validations
)
def test_data_wait_share_counts_the_time_spent_fetching_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warmup_steps: int, validate_every: int | None
) -> None:
    from lightning_accel.data import loading
    from lightning_accel.data.loading import ResumableDataLoader, ResumableSampler

    clock = FakeClock()
    monkeypatch.setattr(devices, "time", clock)
    monkeypatch.setattr(loading, "time", clock)

    class SlowData(TensorDataset):
        def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
            clock.offset += 1.0  # each sample takes a (fake) second to load
            return super().__getitem__(index)

    data = SlowData(torch.randn(64, 4), torch.randn(64, 1))
    loader = ResumableDataLoader(data, ResumableSampler(data), batch_size=4)
    summary = RunSummary(output_dir=str(tmp_path), print_table=False)
    speed = SpeedMonitor(warmup_steps=warmup_steps)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=12,
        val_check_interval=validate_every,
        limit_val_batches=1 if validate_every else 0,
        num_sanity_val_steps=0,
        callbacks=[speed, summary],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    validation = DataLoader(TensorDataset(torch.randn(4, 4), torch.randn(4, 1)), batch_size=4)
    trainer.fit(Regressor(), loader, validation if validate_every else None)
    written = json.loads((tmp_path / "summary.json").read_text())
    # 4 fake seconds of loading per step against well under a real second of compute; the
    # batches fetched outside the measured steps (the first, those after a validation) were
    # counted as waiting in them: twice the time measured, with validation every 2 steps
    assert 0.9 < written["data_wait_share"] <= 1.0


class FakeSecondPerBatch(pl.Callback):
    """Every training batch takes one more (fake) second."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_start(self, *args: object) -> None:
        self.clock.offset += 1.0


@pytest.mark.parametrize("accumulate", [1, 4])
def test_an_optimizer_step_takes_as_long_as_its_micro_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accumulate: int
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(devices, "time", clock)
    data = TensorDataset(torch.randn(4 * 8 * accumulate, 4), torch.randn(4 * 8 * accumulate, 1))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=8,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=4,
        callbacks=[
            SpeedMonitor(warmup_steps=2),  # its clocks start before the batch's second
            FakeSecondPerBatch(clock),
            RunSummary(output_dir=str(tmp_path), print_table=False),
        ],
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Regressor(), DataLoader(data, batch_size=4))

    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["measured_steps"] == 6 * accumulate, "micro-batches after 2 warm-up steps"
    assert written["step_seconds"] == pytest.approx(1.0, abs=0.05)
    assert written["optimizer_step_seconds"] == pytest.approx(accumulate, abs=0.05 * accumulate)
    with (tmp_path / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("speed/step_ms")]
    # every 4 optimizer steps, at the index of the window's last batch (as Lightning logs it)
    assert [int(row["step"]) for row in rows] == [3, 7]
    for row in rows:
        assert float(row["speed/optimizer_step_ms"]) == pytest.approx(
            accumulate * float(row["speed/step_ms"]), rel=0.01
        )


class MLP(pl.LightningModule):
    """Two linear layers whose forward FLOPs are known: 2·batch·(64·128 + 128·10)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Layers(nn.Module):
    """Layers behind a module of this file: torch.compile traces it (it runs torch's own
    modules, such as a bare ``nn.Sequential``, eager)."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs)


class CompiledMLP(MLP):
    """The MLP with its layers compiled (by the eager backend: traced, no code generated)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Layers(self.net)
        self.net.compile(backend="eager")


def _fit_mlp(
    tmp_path: Path, speed: SpeedMonitor, steps: int, log_every: int, model: MLP | None = None
) -> dict:
    data = TensorDataset(torch.randn(32 * steps, 64), torch.randint(0, 10, (32 * steps,)))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        log_every_n_steps=log_every,
        callbacks=[speed, RunSummary(output_dir=str(tmp_path), print_table=False)],
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model or MLP(), DataLoader(data, batch_size=32))
    return json.loads((tmp_path / "summary.json").read_text())


def test_flops_of_a_known_model_and_mfu_against_a_given_peak(tmp_path: Path) -> None:
    peak = 1e11
    speed = SpeedMonitor(warmup_steps=2, peak_flops=peak)
    written = _fit_mlp(tmp_path, speed, steps=8, log_every=50)

    forward = 2 * 32 * (64 * 128 + 128 * 10)
    assert speed.forward_flops == forward
    assert written["flops_per_step"] == 3 * forward
    achieved = 3 * forward / written["step_seconds"]
    assert written["tflops_per_device"] == pytest.approx(achieved / 1e12, rel=1e-2)
    assert written["mfu"] == pytest.approx(achieved / peak, rel=1e-2)
    assert written["peak_flops_source"] == "given"


def test_counting_flops_leaves_compiled_parts_compiled(tmp_path: Path) -> None:
    # torch.compile skips, for the rest of the process, code it first meets under the FLOP
    # counter: counted, the first step runs the compiled layers eager
    graphs_before = speed_module.compiled_graphs() or 0
    speed = SpeedMonitor(warmup_steps=2, peak_flops=1e11)
    written = _fit_mlp(tmp_path, speed, steps=4, log_every=50, model=CompiledMLP())
    assert speed.forward_flops == 2 * 32 * (64 * 128 + 128 * 10)
    assert written["compiled_graphs"] > graphs_before, "compiled from the second step on"


def test_attention_on_the_cpu_is_counted() -> None:
    batch, heads, tokens, width = 2, 4, 64, 16
    q, k, v = (torch.randn(batch, heads, tokens, width) for _ in range(3))
    with flops.flop_counter() as counter:
        nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    # two batched matmuls, scores and weighted values, of 2·b·h·t·t·d FLOPs each
    assert counter.get_total_flops() == 2 * (2 * batch * heads * tokens * tokens * width)


def test_model_flops_utilization_arithmetic() -> None:
    assert speed_module.model_flops_utilization(6e12, 0.5, 24e12) == (12e12, 0.5)
    assert speed_module.model_flops_utilization(6e12, 2.0, None) == (3e12, None)


@pytest.fixture
def synchronized(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """The devices the speed monitor synchronizes, one entry per synchronization."""
    calls: list[torch.device] = []
    monkeypatch.setattr(devices, "synchronize", calls.append)
    return calls


def test_speed_is_logged_every_interval_without_synchronizing_each_step(
    tmp_path: Path, synchronized: list[torch.device]
) -> None:
    written = _fit_mlp(tmp_path, SpeedMonitor(warmup_steps=2), steps=24, log_every=6)

    with (tmp_path / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("speed/step_ms")]
    assert [int(row["step"]) for row in rows] == [5, 11, 17, 23], "each window's last batch"
    for row in rows:
        assert float(row["speed/samples_per_second"]) > 0
        assert 0 < float(row["speed/mfu"]) < 1, "a measured CPU peak bounds the MFU"
        assert float(row["speed/peak_memory_mb"]) > 0
    # the start, the steady clock's start, one per log, the epoch's end, the end of training
    assert len(synchronized) == 4 + len(rows)
    assert written["measured_steps"] == 22
    assert written["peak_flops_source"].startswith("measured float32 matmul")


def test_an_interval_of_zero_logs_no_speed_and_synchronizes_no_more(
    tmp_path: Path, synchronized: list[torch.device]
) -> None:
    written = _fit_mlp(tmp_path, SpeedMonitor(warmup_steps=2), steps=12, log_every=0)

    assert (
        not (tmp_path / "metrics.csv").exists()
        or "speed/" not in (tmp_path / "metrics.csv").read_text()
    )
    # the start, the steady clock's start, the epoch's end, the end of training
    assert len(synchronized) == 4
    assert written["measured_steps"] == 10 and written["step_seconds"] > 0


class SGDLanguageModel(GPTLanguageModel):
    """The GPT with plain SGD (AdamW reads its step counters, host tensors, every step)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class RecordTrainBar(pl.Callback):
    """The training bar's total and count at the end of each epoch."""

    def __init__(self, bar: RunProgressBar) -> None:
        self.bar = bar
        self.shown: list[tuple[float | None, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, *args: object) -> None:
        assert self.bar.progress is not None and self.bar.train_progress_bar_id is not None
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.shown.append((task.total, task.completed))


def test_the_bar_ends_full_under_gradient_accumulation() -> None:
    """Lightning's bar counts the optimizer steps left as batches: 12 batches of 3."""
    bar = RunProgressBar()
    record = RecordTrainBar(bar)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        accumulate_grad_batches=4,
        limit_val_batches=0,
        callbacks=[bar, record],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    data = SyntheticTokenDataModule(seq_len=16, batch_size=4, samples=64, val_samples=8)
    trainer.fit(SGDLanguageModel(n_layer=1, d_model=32, n_head=2, seq_len=16), datamodule=data)
    assert record.shown == [(12, 12)]


@pytest.mark.parametrize("accumulate", [1, 4])
def test_training_reads_tensor_values_at_logging_steps_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accumulate: int
) -> None:
    # Reading a value waits for the accelerator. The model's loss logging (Lightning reads a
    # prog_bar metric after every batch), the bar, the summary and the monitor read it only
    # at logging steps (5 and 10), the first step (the summary's first loss) and the end:
    # once each, also when the step's count stays the same over an accumulation window.
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=12,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=5,
        limit_val_batches=0,
        callbacks=[
            RunProgressBar(),
            RunSummary(output_dir=str(tmp_path), print_table=False),
            SpeedMonitor(),
        ],
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    reads: list[tuple[int, int]] = []  # (optimizer step, batch) of each reading

    def counting(read: Callable[[torch.Tensor], float]) -> Callable[[torch.Tensor], float]:
        def counted(tensor: torch.Tensor) -> float:
            # a value, not the integer seed a DataLoader draws at each epoch's start
            if trainer.training and tensor.is_floating_point():
                progress = trainer.fit_loop.epoch_loop.batch_progress.total
                reads.append((trainer.global_step, progress.ready))
            return read(tensor)

        return counted

    for name in ("item", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    data = SyntheticTokenDataModule(
        seq_len=16, batch_size=4, samples=64 * accumulate, val_samples=8
    )
    trainer.fit(SGDLanguageModel(n_layer=1, d_model=32, n_head=2, seq_len=16), datamodule=data)
    read_at = {step for step, _ in reads}
    assert {1, 5, 10} <= read_at <= {0, 1, 5, 10, 12}, f"read at steps {sorted(read_at)}"
    for step in read_at:
        batches = {batch for at, batch in reads if at == step}
        assert len(batches) == 1, f"step {step} read at batches {sorted(batches)}"


class LoggedRegressor(Regressor):
    """The regressor, logging its training loss."""

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


@pytest.mark.parametrize(("interval", "read_at"), [(2, [1, 2, 4, 6, 7]), (0, [1, 7])])
def test_the_summary_reads_one_loss_per_logged_optimizer_step_under_accumulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: int, read_at: list[int]
) -> None:
    summary = RunSummary(output_dir=str(tmp_path), print_table=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=7,
        accumulate_grad_batches=4,
        log_every_n_steps=interval,
        callbacks=[summary],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    steps: list[int] = []
    read = torch.Tensor.__float__

    def counted(tensor: torch.Tensor) -> float:
        steps.append(trainer.global_step)
        return read(tensor)

    monkeypatch.setattr(torch.Tensor, "__float__", counted)
    data = TensorDataset(torch.randn(112, 4), torch.randn(112, 1))
    trainer.fit(LoggedRegressor(), DataLoader(data, batch_size=4))
    monkeypatch.undo()

    # the logging steps and the last, not every micro-batch of the windows after them
    assert steps == read_at
    assert len(summary.train_losses) == len(read_at)
    assert summary.train_losses[-1] == float(trainer.callback_metrics["train/loss"])


def test_the_bar_shows_no_training_metric_where_nothing_is_logged() -> None:
    bar = RunProgressBar()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        log_every_n_steps=0,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    data = TensorDataset(torch.randn(12, 4), torch.randn(12, 1))
    trainer.fit(LoggedRegressor(), DataLoader(data, batch_size=4))
    assert "train/loss" in trainer.callback_metrics, "the model logged it"
    assert bar._shown is not None and "train/loss" not in bar._shown


@pytest.mark.parametrize(
    ("name", "precision", "matmul", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", "highest", 989.4),
        ("NVIDIA H100 PCIe", "32-true", "highest", 51.2),
        ("NVIDIA H100 PCIe", "32-true", "high", 378.0),
        ("NVIDIA H100 NVL", "16-mixed", "highest", 835.5),
        ("NVIDIA H200", "bf16-true", "highest", 989.5),
        ("NVIDIA B200", "bf16-mixed", "highest", 2250.0),
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", "highest", 312.0),
        ("NVIDIA L4", "32-true", "highest", 30.3),
        ("NVIDIA L40S", "bf16-mixed", "highest", None),
        ("NVIDIA H100 80GB HBM3", "64-true", "high", None),  # no fp64 figure: no MFU
    ],
)
def test_gpu_peaks_come_from_the_datasheet_table(
    name: str, precision: str, matmul: str, tflops: float | None
) -> None:
    peak = devices.gpu_peak(name, precision, matmul)
    if tflops is None:
        assert peak is None
    else:
        assert peak is not None and peak.flops_per_second == pytest.approx(tflops * 1e12)


def test_a_cpu_run_in_64_true_is_measured_against_a_float64_matmul() -> None:
    peak = devices.device_peak(torch.device("cpu"), "64-true")
    assert peak is not None and peak.source.startswith("measured float64 matmul")


@pytest.mark.parametrize(
    ("kind", "tflops"),
    [("TPU v4", 275.0), ("TPU v5litepod", 197.0), ("TPU v5p", 459.0), ("TPU v6e", 918.0)],
)
def test_tpu_peaks_come_from_the_published_figures(kind: str, tflops: float) -> None:
    peak = devices.tpu_peak(kind)
    assert peak is not None and peak.flops_per_second == pytest.approx(tflops * 1e12)


def test_timing_waits_for_queued_work_on_every_asynchronous_accelerator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waited: list[str] = []
    monkeypatch.setattr(devices.xla_runtime, "wait", lambda: waited.append("xla"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: waited.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    for kind in ("xla", "cuda", "mps", "cpu"):
        devices.synchronized_time(torch.device(kind))
    assert waited == ["xla", "cuda", "mps"]


def test_peak_memory_on_xla_comes_from_the_device_where_it_reports_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xla = torch.device("xla", 0)
    monkeypatch.setattr(memory.xla_runtime, "peak_memory_bytes", lambda device: 3 * 2**30)
    assert memory.peak_memory_mb(xla) == 3 * 1024
    monkeypatch.setattr(memory.xla_runtime, "peak_memory_bytes", lambda device: None)
    assert memory.peak_memory_mb(xla) == memory.peak_process_memory_mb()  # PJRT on the CPU


class _FinalCount(RunProgressBar):
    """The bar, recording the training count and total it shows as training ends."""

    shown: tuple[float, float | None] | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.progress is not None and self.train_progress_bar_id is not None
        task = self.progress.tasks[self.train_progress_bar_id]
        self.shown = (task.completed, task.total)
        super().on_train_end(trainer, pl_module)


def test_a_run_resumed_inside_an_epoch_counts_its_batches_on_to_the_step_budget(
    tmp_path: Path,
) -> None:
    """Lightning counts on from the batches of the epoch the checkpoint had trained; the
    budget counted only the steps left, and the bar of steps 4 to 7 showed 7/3."""
    data = DataLoader(TensorDataset(torch.randn(40, 4), torch.randn(40, 1)), batch_size=4)
    quiet = {"accelerator": "cpu", "logger": False, "enable_model_summary": False}
    first = pl.Trainer(max_steps=4, enable_checkpointing=False, callbacks=[_FinalCount()], **quiet)
    first.fit(Regressor(), data)
    first.save_checkpoint(tmp_path / "step-4.ckpt")
    bar = _FinalCount()
    resumed = pl.Trainer(max_steps=7, enable_checkpointing=False, callbacks=[bar], **quiet)
    resumed.fit(Regressor(), data, ckpt_path=tmp_path / "step-4.ckpt")
    assert resumed.global_step == 7
    assert bar.shown == (7, 7)


def test_a_run_resumed_from_a_checkpoint_without_a_summary_still_reports_its_last_loss(
    tmp_path: Path,
) -> None:
    # a checkpoint a plain Trainer saved holds no summary state; the resumed attempt's
    # steps fall between logging steps, so only the end of training reads a loss
    data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    first = pl.Trainer(accelerator="cpu", max_steps=4, default_root_dir=tmp_path, **quiet)
    first.fit(LoggingRegression(), DataLoader(data, batch_size=4))
    saved = first.checkpoint_callback.best_model_path
    summary = RunSummary(output_dir=str(tmp_path), print_table=False)
    resumed = pl.Trainer(
        accelerator="cpu", max_steps=8, callbacks=[summary], enable_checkpointing=False, **quiet
    )
    resumed.fit(LoggingRegression(), DataLoader(data, batch_size=4), ckpt_path=saved)
    written = json.loads((tmp_path / "summary.json").read_text())
    last_loss = float(resumed.callback_metrics["train/loss"])
    assert written["last_train_loss"] == pytest.approx(last_loss)
    assert written["resumed_from_step"] == 4
    assert [attempt["from_step"] for attempt in written["attempts"]] == [4], "none recorded before"


def test_a_checkpoints_malformed_summary_record_is_set_aside_with_a_warning(
    tmp_path: Path,
) -> None:
    # a checkpoint is data from anywhere: a record the summary would format as numbers at
    # the end of training, after every step had run, is checked where the run resumes
    data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randn(64, 1)), batch_size=4)
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    first = pl.Trainer(
        accelerator="cpu",
        max_steps=4,
        default_root_dir=tmp_path,
        callbacks=[RunSummary(output_dir=str(tmp_path), print_table=False)],
        **quiet,
    )
    first.fit(LoggingRegression(), data)
    saved = Path(first.checkpoint_callback.best_model_path)
    checkpoint = torch.load(saved, weights_only=True)
    assert checkpoint["callbacks"]["RunSummary"]["validations"] == [], "a record was saved"
    checkpoint["callbacks"]["RunSummary"]["validations"] = [{"step": "4", "val/loss": "low"}]
    torch.save(checkpoint, saved)
    summary = RunSummary(output_dir=str(tmp_path), print_table=True)
    resumed = pl.Trainer(
        accelerator="cpu", max_steps=8, callbacks=[summary], enable_checkpointing=False, **quiet
    )
    with pytest.warns(UserWarning, match="the summary starts at step 4"):
        resumed.fit(LoggingRegression(), data, ckpt_path=saved)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert (written["validation"], written["resumed_from_step"]) == ([], 4)


def test_measuring_the_cpu_peak_leaves_the_runs_random_stream_alone() -> None:
    # measured at on_train_start, it drew from the global generator: a run's dropout masks
    # differed with the monitor and without it, and in a sweep, between its first job (which
    # measured) and the next (which read the measurement from the cache)
    before = torch.get_rng_state()
    devices.measured_cpu_peak(torch.float32, size=64, repeats=1)
    assert torch.equal(torch.get_rng_state(), before)
