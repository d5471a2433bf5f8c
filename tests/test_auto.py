"""``optimization=auto``: compile kept only where it pays, the largest micro-batch that
fits with the same update, and every choice recorded with its reason."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import replace
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers import TINY, composed_run, run_cli, trained

from lightning_accel.cli import choices
from lightning_accel.cli.choices import _with_micro_batches, timed_choices
from lightning_accel.cli.rank_server import in_a_fresh_process, start_rank_server, stop_rank_server
from lightning_accel.cli.runner import fit_run
from lightning_accel.config import CompileConfig, HardwareConfig
from lightning_accel.errors import ConfigError
from lightning_accel.optimize.measured_choices import (
    CompileChoice,
    StepTimes,
    compile_pays,
    fastest_precision,
)
from lightning_accel.optimize.transforms import check_model_optimizations, compile_model
from lightning_accel.plan import attach_trainer, measure_footprint, meta_model
from lightning_accel.plan.fit import largest_micro_batch
from lightning_accel.plan.layouts import Placement, rank_memory
from lightning_accel.plan.run import plan_run
from lightning_accel.precision import PrecisionChoice

SINGLE = Placement("single", 1, "32-true")


def _timings(eager: StepTimes, compiled: StepTimes):  # noqa: ANN202 - a stand-in measurement
    return lambda module, batch, candidates: {
        name: eager if c.compile_config is None else compiled for name, c in candidates.items()
    }


@pytest.mark.parametrize(
    ("run_steps", "enabled"), [(1000, True), (50, False)], ids=["long run", "short run"]
)
def test_compile_is_kept_only_when_its_saving_exceeds_its_compile_time(
    run_steps: int, enabled: bool
) -> None:
    # compiled: 20 s to compile, then 0.08 s a step instead of eager's 0.10 s
    measure = _timings(StepTimes(0.1, 0.1), StepTimes(20.08, 0.08))
    choice = compile_pays(None, None, "32-true", CompileConfig(), run_steps, measure=measure)
    assert choice.enabled is enabled
    assert "1.25x the speed of eager; 20.0 s of compilation against" in choice.reason
    assert choice.reason.endswith("compiled" if enabled else "kept eager")


def test_compile_that_is_slower_is_never_kept() -> None:
    measure = _timings(StepTimes(0.1, 0.1), StepTimes(0.12, 0.12))
    assert not compile_pays(None, None, "32-true", CompileConfig(), 10**6, measure=measure).enabled
    assert not compile_pays(None, None, "32-true", CompileConfig(), None, measure=measure).enabled


def test_a_run_of_no_set_length_compiles_whenever_compiled_steps_are_clearly_faster() -> None:
    measure = _timings(StepTimes(0.1, 0.1), StepTimes(20.08, 0.08))
    choice = compile_pays(None, None, "32-true", CompileConfig(), None, measure=measure)
    assert choice.enabled
    assert "20.0 s of compilation over a run of no set length" in choice.reason


@pytest.mark.parametrize("run_steps", [10**6, None], ids=["long run", "no set length"])
def test_compile_needs_a_clear_margin_however_long_the_run(run_steps: int | None) -> None:
    # 3% faster: over a million steps it would save far more than its 20 s of compilation
    measure = _timings(StepTimes(0.103, 0.103), StepTimes(20.1, 0.1))
    choice = compile_pays(None, None, "32-true", CompileConfig(), run_steps, measure=measure)
    assert not choice.enabled
    assert "1.03x the speed of eager (under the 1.05x required)" in choice.reason


def _by_mode(eager: StepTimes, per_block: StepTimes, whole: StepTimes):  # noqa: ANN202
    def measure(module: Any, batch: Any, candidates: dict) -> dict[str, StepTimes]:
        timed = {}
        for name, candidate in candidates.items():
            config = candidate.compile_config
            timed[name] = eager if config is None else per_block if config.per_block else whole
        return timed

    return measure


@pytest.mark.parametrize(
    ("whole_model", "enabled", "per_block"),
    [(True, True, False), (False, False, True)],
    ids=["whole model timed", "per block alone (fsdp2)"],
)
def test_the_faster_compile_mode_is_weighed_against_eager(
    whole_model: bool, enabled: bool, per_block: bool
) -> None:
    # the figures measured on an H200: per-block compile 0.94x eager, the whole model 1.15x
    measure = _by_mode(StepTimes(0.0244, 0.0244), StepTimes(9.3, 0.0259), StepTimes(20, 0.0212))
    config = CompileConfig(enabled="auto", per_block=True)
    choice = compile_pays(None, None, "bf16-mixed", config, None, whole_model, measure=measure)
    assert (choice.enabled, choice.per_block) == (enabled, per_block)
    if whole_model:
        assert "measured 0.94x (per block) and 1.15x (whole model) the speed of eager" in (
            choice.reason
        )
        assert choice.reason.endswith("compiled whole model")
    else:
        assert "measured 0.94x the speed of eager (under the 1.05x required)" in choice.reason


def test_per_block_compile_is_kept_where_it_is_the_faster() -> None:
    measure = _by_mode(StepTimes(0.1, 0.1), StepTimes(10.08, 0.08), StepTimes(30.09, 0.09))
    config = CompileConfig(enabled="auto", per_block=True)
    choice = compile_pays(None, None, "32-true", config, None, True, measure=measure)
    assert choice.enabled and choice.per_block
    assert "10.0 s of compilation" in choice.reason and choice.reason.endswith("per block")


@pytest.mark.parametrize(
    ("failing", "enabled", "ending"),
    [
        (("whole model",), True, "compiled steps measured 1.25x (per block) the speed of "
         "eager; whole model failed in the trial (RuntimeError: no triton); 10.0 s of "
         "compilation over a run of no set length: compiled per block"),
        (("per block", "whole model"), False, "compiling failed in the trial (per block: "
         "RuntimeError: no triton; whole model: RuntimeError: no triton): kept eager"),
    ],
    ids=["one mode fails", "both fail"],
)  # fmt: skip
def test_a_compile_mode_that_fails_in_the_trial_is_never_chosen(
    failing: tuple[str, ...], enabled: bool, ending: str
) -> None:
    timings = _by_mode(StepTimes(0.1, 0.1), StepTimes(10.08, 0.08), StepTimes(0, 0))

    def measure(module: Any, batch: Any, candidates: dict) -> dict[str, StepTimes]:
        failed = StepTimes(math.inf, math.inf, RuntimeError("no triton\ntraceback"))
        measured = timings(module, batch, candidates)
        return {name: failed if name in failing else measured[name] for name in candidates}

    config = CompileConfig(enabled="auto", per_block=True)
    choice = compile_pays(None, None, "32-true", config, None, True, measure=measure)
    assert (choice.enabled, choice.per_block) == (enabled, True)
    assert choice.reason.endswith(ending), choice.reason


def test_a_reduced_precision_that_fails_keeps_fp32_and_a_failing_baseline_is_raised() -> None:
    def measure(failing: str):  # noqa: ANN202 - a stand-in measurement
        error = RuntimeError(f"{failing} kernel missing")
        return lambda module, batch, candidates: {
            name: StepTimes(math.inf, math.inf, error) if name == failing else StepTimes(1, 1)
            for name in candidates
        }

    bf16 = PrecisionChoice("bf16-mixed", "the GPU computes in bf16")
    kept = fastest_precision(bf16, None, None, measure("bf16-mixed"))
    assert kept == PrecisionChoice(
        "32-true", "bf16-mixed failed in the trial (RuntimeError: bf16-mixed kernel missing); "
        "kept 32-true"
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="32-true kernel missing"):
        fastest_precision(bf16, None, None, measure("32-true"))


def test_the_largest_micro_batch_that_fits_divides_the_batch() -> None:
    model = meta_model({"_target_": "lightning_accel.models.GPTLanguageModel", "seq_len": 64})
    attach_trainer(model, 10)
    batch = (torch.empty(12, 64, dtype=torch.long, device="meta"),) * 2
    footprint = measure_footprint(model, batch, count_flops=False)
    full = rank_memory(footprint, SINGLE)
    quarter = rank_memory(footprint.with_samples(3), replace(SINGLE, accumulate=4))
    limit = (full.device_bytes + quarter.device_bytes) // 2
    micro, memory = largest_micro_batch(footprint, SINGLE, limit)
    assert micro in (3, 4, 6) and 12 % micro == 0 and memory.device_bytes <= limit
    assert memory.gradients == footprint.parameter_bytes(), "gradients outlive micro-batches"
    assert largest_micro_batch(footprint, SINGLE, 10**12)[0] == 12
    assert largest_micro_batch(footprint, SINGLE, 1000) is None


def test_micro_batches_with_accumulation_make_the_same_updates(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = [f"data.source={small_corpus}", "data.batch_size=8", "trainer.val_check_interval=3"]
    whole = composed_run(tmp_path / "whole", data)
    split = _with_micro_batches(composed_run(tmp_path / "split", data), 2, "test")
    assert split.data["batch_size"] == 2 and split.optimization.accumulate_grad_batches == 4
    assert split.trainer.val_check_interval == 12 and split.trainer.limit_val_batches == 8
    weights = []
    for run in (whole, split):
        fit_run(run)
        checkpoint = torch.load(Path(run.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 6
        weights.append(checkpoint["state_dict"])
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-5, atol=1e-6)


def test_optimization_auto_records_every_choice_with_its_reason(
    tmp_path: Path, small_corpus: Path
) -> None:
    args = [
        "train", *TINY, f"data.source={small_corpus}", "optimization=auto", "callbacks=minimal",
        "optimization.compile.backend=aot_eager", "hydra.run.dir=out",
    ]  # fmt: skip
    result, summary, config = trained(tmp_path, args)
    assert summary["micro_batch_reason"].startswith("the batch of 8 fits (predicted")
    assert config["micro_batch_reason"] == summary["micro_batch_reason"]
    assert "measured" in summary["precision_reason"] or "no bf16" in summary["precision_reason"]
    assert config["compile"]["enabled"] in (True, False)
    assert summary["compile"] is config["compile"]["enabled"]
    assert "compiled steps measured" in summary["compile_reason"]
    assert "(per block) and" in summary["compile_reason"], "one device: both modes timed"
    if config["compile"]["enabled"]:
        per_block = summary["compile_reason"].endswith("per block")
        assert config["compile"]["per_block"] is per_block
    assert config["compile"]["reason"] == summary["compile_reason"]
    for line in ("micro-batch: the batch of 8 fits", "compile o"):
        assert line in result.stderr


def test_strategy_auto_on_several_devices_runs_the_layout_the_plan_ranks_first(
    tmp_path: Path, small_corpus: Path
) -> None:
    args = [
        "train", *TINY, f"data.source={small_corpus}", "hardware.accelerator=cpu",
        "hardware.devices=2", "callbacks=minimal", "hydra.run.dir=out",
    ]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["hardware"]
    plan = json.loads(
        run_cli(["plan", "--json", *TINY, f"data.source={small_corpus}"], cwd=tmp_path).stdout
    )
    first = next(
        r
        for r in plan["layouts"]
        if r["world"] == 2 and r["precision"] == "32-true" and not r["activation_checkpointing"]
    )
    expected = {"ddp": "accel_ddp", "fsdp2": "fsdp2"}[first["layout"]]
    assert config["strategy"] == expected == summary["strategy"]
    assert summary["strategy_reason"].startswith(f"{first['layout']} ranks first of")
    assert summary["world_size"] == 2


def test_timed_trials_run_forked_from_the_rank_server_in_the_launchers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # none running: the call starts the server its child is forked from, and stops it after
    server = in_a_fresh_process(os.getppid)
    assert server != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(server, 0)
    start_rank_server()
    try:
        server = forkserver._forkserver._forkserver_pid
        assert in_a_fresh_process(os.getppid) == server, "forked from the running server"
        monkeypatch.setenv("LIGHTNING_ACCEL_PROBE", "set after the server started")
        probe = in_a_fresh_process(os.getenv, "LIGHTNING_ACCEL_PROBE")
        assert probe == "set after the server started"
        assert in_a_fresh_process(signal.getsignal, signal.SIGTERM) == signal.SIG_DFL
        with pytest.raises(ConfigError, match="hardware.devices"):
            in_a_fresh_process(plan_run, HardwareConfig(accelerator="cpu", devices=1000))
        started = time.perf_counter()
        with pytest.raises(TimeoutError, match="it did not end in 0.5 s"):
            in_a_fresh_process(time.sleep, 60, timeout=0.5)
        assert time.perf_counter() - started < 30, "the child was killed, not waited for"
        assert forkserver._forkserver._forkserver_pid == server, "still running"
    finally:
        stop_rank_server()


def test_a_chosen_micro_batch_alone_gets_one_trial_step_and_keeps_the_profile(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = composed_run(tmp_path / "trial", [f"data.source={small_corpus}", "optimization=auto"])
    optimization = replace(
        run.optimization,
        precision="32-true",
        compile=replace(run.optimization.compile, enabled=False),
        fp8=replace(run.optimization.fp8, enabled=False),
        micro_batch=None,
        float32_matmul_precision="medium",
    )
    trials: list[dict] = []
    matmuls: list[str] = []

    outcomes = [StepTimes(0.1, 0.1), StepTimes(math.inf, math.inf, MemoryError("out"))]

    def step_times(*args: Any, **kwargs: Any) -> dict[str, StepTimes]:
        trials.append(args[2])
        matmuls.append(torch.get_float32_matmul_precision())
        return {"trial": outcomes[len(trials) - 1]}

    monkeypatch.setattr(choices, "step_times", step_times)
    before = torch.get_float32_matmul_precision()
    try:
        assert timed_choices(replace(run, optimization=optimization)) is optimization
        with pytest.raises(MemoryError, match="out"):  # the step that confirms the choice
            timed_choices(replace(run, optimization=optimization))
    finally:
        torch.set_float32_matmul_precision(before)
    assert [{n: c.precision for n, c in t.items()} for t in trials] == [{"trial": "32-true"}] * 2
    assert matmuls == ["medium"] * 2, "fp32 timed with the profile's matmul precision"


class _BlocklessClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(8, 2)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.head(batch).square().mean()


def test_compile_auto_times_the_whole_model_where_the_model_has_no_repeated_blocks(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = composed_run(tmp_path / "trial", [f"data.source={small_corpus}", "optimization=fast"])
    optimization = replace(
        run.optimization, precision="32-true", fp8=replace(run.optimization.fp8, enabled=False)
    )
    assert optimization.compile.per_block and optimization.compile.enabled == "auto"
    model = _BlocklessClassifier()
    check_model_optimizations(model, optimization)  # not refused: auto has the whole model
    timed: list[CompileConfig] = []

    def timed_compile(module: Any, batch: Any, precision: str, config: CompileConfig, *_: Any):  # noqa: ANN202
        timed.append(config)
        return CompileChoice(True, "measured", config.per_block)

    monkeypatch.setattr(choices, "first_batch", lambda run, device: (torch.ones(4, 8), model))
    monkeypatch.setattr(choices, "compile_pays", timed_compile)
    chosen = timed_choices(replace(run, optimization=optimization))
    assert [config.per_block for config in timed] == [False]
    assert chosen.compile.enabled is True and chosen.compile.per_block is False
    with pytest.raises(ConfigError, match="per_block=True needs repeated blocks"):
        check_model_optimizations(
            model, replace(optimization, compile=CompileConfig(True, per_block=True))
        )
    compile_model(model, replace(optimization.compile, enabled=True))
    assert model.head._compiled_call_impl is not None, "auto on a GPU compiles the children"
