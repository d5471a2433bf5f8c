"""``optimization.channels_last: auto`` (the ``fast`` and ``auto`` profiles): channels-last
where a model's convolution weights stay whole (one device, DDP), off under FSDP2 and XLA,
decided before the run so that the image batches follow the model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.callbacks.run_summary import summary_table
from lightning_accel.cli import choices
from lightning_accel.cli.compose import compose_job
from lightning_accel.cli.preflight import measure_run, validated_run
from lightning_accel.cli.schema import RunConfig
from lightning_accel.config import OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.optimize.measured_choices import StepTimes
from lightning_accel.optimize.memory_format import (
    NO_CONVOLUTIONS,
    ChannelsLastChoice,
    channels_last_choice,
    strategy_layout,
)
from lightning_accel.optimize.transforms import (
    ModelOptimizations,
    check_model_optimizations,
    model_transforms,
)
from lightning_accel.plan import meta_model
from lightning_accel.plan.run import plan_run
from lightning_accel.strategies import AccelDDPStrategy, FSDP2Strategy
from lightning_accel.trainer_factory import build_trainer

CONVOLUTIONAL = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))


@pytest.mark.parametrize(
    ("accelerator", "layout", "enabled"),
    [
        ("cpu", "single", True),
        ("cuda", "single", True),
        ("cuda", "ddp", True),
        ("cuda", "fsdp2", False),
        ("cuda", "fsdp2_offload", False),
        ("cuda", "hsdp", False),
        ("cuda", "tp", False),
        ("pjrt", None, False),
        ("tpu", None, False),
        ("mps", "single", False),
        ("cpu", None, False),
    ],
)
def test_channels_last_only_where_convolution_weights_stay_whole(
    accelerator: str, layout: str | None, enabled: bool
) -> None:
    choice = channels_last_choice(CONVOLUTIONAL, accelerator, layout, "some_strategy")
    assert choice.enabled is enabled
    assert choice.reason and choice.reason != NO_CONVOLUTIONS


def test_a_model_without_convolutions_or_unknown_keeps_the_contiguous_format() -> None:
    linear = channels_last_choice(nn.Linear(4, 4), "cuda", "single", "auto")
    assert (linear.enabled, linear.reason) == (False, NO_CONVOLUTIONS)
    unknown = channels_last_choice(None, "cuda", "single", "auto")
    assert unknown.enabled is False and unknown.reason != NO_CONVOLUTIONS


def test_auto_is_not_a_transform_before_the_model_and_strategy_are_known() -> None:
    assert "channels_last" not in model_transforms(OptimizationConfig(channels_last="auto"), "cpu")
    assert "channels_last" in model_transforms(OptimizationConfig(channels_last=True), "cpu")
    with pytest.raises(ConfigError, match="optimization.channels_last"):
        OptimizationConfig(channels_last="sometimes")


def test_the_strategies_that_keep_the_weights_whole() -> None:
    cpu = torch.device("cpu")
    assert strategy_layout(SingleDeviceStrategy(cpu)) == "single"
    assert strategy_layout(DDPStrategy()) == strategy_layout(AccelDDPStrategy()) == "ddp"
    assert strategy_layout(FSDP2Strategy()) is None
    assert strategy_layout(FSDPStrategy()) is None


class _TinyConvolutional(pl.LightningModule):
    def __init__(self, convolutional: bool) -> None:
        super().__init__()
        first = nn.Conv2d(3, 4, 3, padding=1) if convolutional else nn.Identity()
        self.net = nn.Sequential(first, nn.Flatten(), nn.Linear(144 if convolutional else 108, 2))
        self.weight_formats: list[bool] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):  # noqa: ANN201
        images, labels = batch
        weights = [p for p in self.parameters() if p.dim() == 4]
        self.weight_formats += [w.is_contiguous(memory_format=torch.channels_last) for w in weights]
        return nn.functional.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("convolutional", "transform", "reason"),
    [(True, True, "kept whole on one device"), (False, False, NO_CONVOLUTIONS)],
)
def test_a_trainer_built_without_the_runner_decides_auto_at_setup(
    convolutional: bool, transform: bool, reason: str
) -> None:
    data = TensorDataset(torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,)))
    optimization = OptimizationConfig(channels_last="auto")
    trainer = build_trainer(
        "cpu", optimization, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    model = _TinyConvolutional(convolutional)
    trainer.fit(model, DataLoader(data, batch_size=4))
    transforms = next(c for c in trainer.callbacks if isinstance(c, ModelOptimizations))
    figures = transforms.summary_figures()
    assert ("channels_last" in figures["transforms"]) is transform
    assert reason in figures["channels_last_reason"]
    assert model.weight_formats == [True, True] if convolutional else not model.weight_formats
    assert optimization.channels_last == "auto", "the caller's profile is left as given"


def _image_run(run_dir: Path, overrides: list[str]) -> RunConfig:
    job = ["recipe=image", "logger=none", "callbacks=minimal", *overrides]
    return validated_run(compose_job(job), run_dir)


@pytest.mark.parametrize(
    ("hardware", "enabled", "reason"),
    [
        ("cpu", True, "kept whole on one device"),
        ("ddp_cpu", True, "kept whole on DDP"),
        ("fsdp2_cpu", False, "the fsdp2 layout shards the weights"),
    ],
)
def test_the_fast_profile_decides_before_the_run_and_the_image_batches_follow(
    tmp_path: Path, hardware: str, enabled: bool, reason: str
) -> None:
    run = _image_run(tmp_path / "run", ["optimization=fast", f"hardware={hardware}"])
    assert run.optimization.channels_last is enabled
    assert reason in run.optimization.channels_last_reason
    assert run.data["channels_last"] is enabled, "the recipe's batches follow the choice"


def test_the_default_recipe_records_why_fast_leaves_channels_last_off(tmp_path: Path) -> None:
    job = ["logger=none", "callbacks=minimal", "optimization=fast"]
    run = validated_run(compose_job(job), tmp_path / "run")
    assert run.optimization.channels_last is False
    assert run.optimization.channels_last_reason == NO_CONVOLUTIONS


def test_strategy_auto_keeps_channels_last_weights_on_a_layout_that_does_not_shard_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = ["hardware.accelerator=cpu", "hardware.devices=2", "data.batch_size=16"]
    run = _image_run(tmp_path / "run", ["optimization=fast", *devices])
    assert run.hardware.strategy == "auto" and run.optimization.channels_last is True
    plan = plan_run(run.hardware, run.optimization)
    measured = measure_run(run, plan, meta_model(run.model), choices.build_object(run.data, "d"))
    assert measured is not None
    footprint = measured[0]
    ranked = choices.plan_layouts

    def fsdp2_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - plan_layouts' own
        rows = ranked(*args, **kwargs)
        return sorted(rows, key=lambda row: row.estimate.layout != "fsdp2")

    monkeypatch.setattr(choices, "plan_layouts", fsdp2_first)
    sharded = choices.choose_layout(run, footprint)
    assert sharded.hardware.strategy == "fsdp2", "the plan's first choice without channels-last"
    whole = choices.choose_layout(run, footprint, whole_weights=True)
    assert whole.hardware.strategy == "accel_ddp"
    assert whole.hardware.strategy_reason.startswith("ddp ranks first of ddp")
    assert "fsdp2" not in whole.hardware.strategy_reason
    assert whole.hardware.strategy_reason.endswith(
        "of the layouts that keep channels-last weights whole"
    )


def _table_text(summary: dict) -> str:
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    return console.export_text()


def test_the_end_of_run_table_says_why_only_for_a_model_with_convolutions() -> None:
    summary = {
        "strategy": "single_device", "steps": 4, "wall_seconds": 1.0, "precision": "32-true",
        "first_train_loss": 2.0, "last_train_loss": 1.0, "transforms": ["channels_last"],
        "channels_last_reason": "convolution weights kept whole on one device: ...",
    }  # fmt: skip
    assert "channels-last" in _table_text(summary)
    assert "on (convolution weights kept whole" in _table_text(summary)
    off = {**summary, "transforms": [], "channels_last_reason": "the fsdp2 layout shards ..."}
    assert "off (the fsdp2 layout shards" in _table_text(off)
    unconcerned = {**summary, "transforms": [], "channels_last_reason": NO_CONVOLUTIONS}
    assert "channels-last" not in _table_text(unconcerned)


def test_the_timed_trials_run_in_the_memory_format_the_run_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _image_run(tmp_path / "run", ["optimization=fast"])
    optimization = replace(
        run.optimization,
        precision="32-true",
        compile=replace(run.optimization.compile, enabled=False),
        fp8=replace(run.optimization.fp8, enabled=False),
    )
    timed: list[tuple[nn.Module, torch.Tensor]] = []

    def step_times(model, batch, candidates, **kwargs):  # noqa: ANN001, ANN003, ANN202
        timed.append((model, batch[0]))
        return {name: StepTimes(0.1, 0.1) for name in candidates}

    monkeypatch.setattr(choices, "step_times", step_times)
    choices.timed_choices(replace(run, optimization=optimization))
    ((model, images),) = timed
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert images.dim() == 4 and images.stride()[1] == 1, "batches channels-last too"


def test_a_model_with_lazy_modules_keeps_the_contiguous_format() -> None:
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(2))
    choice = channels_last_choice(lazy, "cpu", "single", "auto")
    assert choice == ChannelsLastChoice(
        False, "the model's LazyConv2d has no weights until its first batch"
    )
    with pytest.raises(
        ConfigError, match=r"channels_last=True needs initialized weights.*LazyConv2d"
    ):
        check_model_optimizations(lazy, OptimizationConfig(channels_last=True))
    check_model_optimizations(lazy, OptimizationConfig(channels_last="auto"))
