"""``optimization.fp8.enabled=auto``: float8 off without a trial where it cannot run or
cannot pay, and otherwise kept only where a timed trial shows it pays over the run."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TINY, composed_run, run_cli, trained

from lightning_accel.cli import choices
from lightning_accel.cli.choices import float8_without_trial, timed_choices
from lightning_accel.config import CompileConfig, Float8Config, OptimizationConfig
from lightning_accel.cpu_load import OtherLoad
from lightning_accel.errors import ConfigError
from lightning_accel.models import GPT, GPTConfig, GPTLanguageModel
from lightning_accel.optimize import measured_choices
from lightning_accel.optimize.float8 import float8_summary, too_narrow_for_float8
from lightning_accel.optimize.measured_choices import (
    Candidate,
    Float8Choice,
    StepTimes,
    candidate_model,
    float8_pays,
)
from lightning_accel.optimize.transforms import model_transforms
from lightning_accel.plan.run import plan_run

AUTO = Float8Config(enabled="auto")
COMPILED = CompileConfig(enabled=True, backend="aot_eager", per_block=True)


def _timings(without: StepTimes, float8: StepTimes):  # noqa: ANN202 - a stand-in measurement
    return lambda module, batch, candidates: {
        name: without if c.float8 is None else float8 for name, c in candidates.items()
    }


@pytest.mark.parametrize(
    ("run_steps", "enabled"), [(1000, True), (500, False), (None, True)],
    ids=["long run", "short run", "no set length"],
)  # fmt: skip
def test_float8_is_kept_only_where_its_saving_exceeds_its_extra_compilation(
    run_steps: int | None, enabled: bool
) -> None:
    # the H200's figures at 4,096 wide: 1.22x; 10 s more compilation than bf16's 10 s
    measure = _timings(StepTimes(10.1, 0.1), StepTimes(20.082, 0.082))
    choice = float8_pays(None, None, "bf16-mixed", COMPILED, AUTO, run_steps, measure=measure)
    assert choice.enabled is enabled
    assert choice.reason.startswith(
        "tensorwise float8 steps measured 1.22x the speed of bf16-mixed ones (compiled); "
        "10.0 s more compilation"
    )
    assert choice.reason.endswith("float8 on" if enabled else "kept off")


def test_float8_that_is_not_clearly_faster_is_never_kept() -> None:
    # the H200's figure at 768 wide: 0.70x
    measure = _timings(StepTimes(10.1, 0.1), StepTimes(20.143, 0.143))
    choice = float8_pays(None, None, "bf16-mixed", COMPILED, AUTO, None, measure=measure)
    assert not choice.enabled
    assert "measured 0.70x the speed of bf16-mixed ones (compiled) (under the 1.05x" in (
        choice.reason
    )


def test_the_trial_times_float8_in_the_runs_precision_and_compile_with_its_layers_converted() -> (
    None
):
    torch.manual_seed(0)
    module = GPT(GPTConfig(seq_len=16, n_layer=2, d_model=32, n_head=2))
    seen: dict[str, Any] = {}

    def measure(model: Any, batch: Any, candidates: dict[str, Candidate]) -> dict:
        for name, candidate in candidates.items():
            prepared = candidate_model(model, candidate)
            converted = float8_summary(prepared)
            seen[name] = (
                candidate.precision,
                len(converted["layers"]) if converted else 0,
                prepared.blocks[0]._compiled_call_impl is not None,  # nn.Module.compile
            )
        return {name: StepTimes(1.0, 0.1) for name in candidates}

    emulated = Float8Config(enabled=True, emulate=True)
    float8_pays(module, None, "bf16-mixed", COMPILED, emulated, None, measure=measure)
    # both compiled block by block; only the float8 candidate's 8 block layers converted
    assert seen == {
        "without": ("bf16-mixed", 0, True),
        "float8": ("bf16-mixed", 8, True),
    }
    assert float8_summary(module) is None, "the trial converts copies"


def test_float8_steps_that_fail_in_the_trial_leave_float8_off_and_the_others_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    module = GPTLanguageModel(n_layer=1, d_model=32, n_head=2, seq_len=16)
    tokens = torch.randint(0, 256, (2, 17))
    batch = (tokens[:, :-1], tokens[:, 1:])
    candidates = {"without": Candidate("32-true"), "float8": Candidate("32-true", None, AUTO)}

    def prepared(model: Any, candidate: Candidate) -> Any:
        if candidate.float8 is not None:
            raise RuntimeError("torch._scaled_mm: no kernel for this device\nmore lines")
        return original(model, candidate)

    original = measured_choices.candidate_model
    monkeypatch.setattr(measured_choices, "candidate_model", prepared)
    timings = measured_choices.step_times(module, batch, candidates, min_seconds=0, min_rounds=2)
    assert timings["without"].error is None and 0 < timings["without"].steady < math.inf
    assert timings["float8"].failure() == (
        "RuntimeError: torch._scaled_mm: no kernel for this device"
    )
    unread = tmp_path / "absent"  # the other processes' load unread: a trial taken once
    choice = float8_pays(
        module, batch, "32-true", CompileConfig(), AUTO, None, load=lambda: OtherLoad(unread)
    )
    assert choice == Float8Choice(
        False,
        "float8 steps failed in the trial (RuntimeError: torch._scaled_mm: no kernel for this "
        "device): kept off",
    )


def test_layers_narrower_than_float8s_break_even_keep_it_off_without_a_trial() -> None:
    with torch.device("meta"):
        narrow, wide = (
            GPT(GPTConfig(seq_len=16, n_layer=1, d_model=d, n_head=2)) for d in (768, 2048)
        )
        unusable = GPT(GPTConfig(seq_len=16, n_layer=1, d_model=24, n_head=2))
    assert too_narrow_for_float8(narrow) == (
        "float8 layers of at most 768 features (the smaller of in and out) are likely slower "
        "than bf16: on an H200 float8 ran 0.70x bf16's speed at 768 and broke even at about "
        "2048 (docs/precision.md)"
    )
    assert too_narrow_for_float8(wide) is None
    assert too_narrow_for_float8(unusable) == "no Linear layer of GPT can train in float8"


def test_without_float8_tensor_cores_auto_is_off_with_the_reason_and_starts_no_trial(
    tmp_path: Path,
) -> None:
    run = composed_run(tmp_path / "run", ["optimization=fast"])
    assert run.optimization.fp8.enabled == "auto"
    decided = float8_without_trial(run, plan_run(run.hardware, run.optimization))
    assert decided.optimization.fp8 == replace(
        run.optimization.fp8,
        enabled=False,
        reason="float8 needs a GPU with float8 tensor cores (compute capability 8.9 or newer) "
        "and this run's device (cpu) has none",
    )
    assert not choices._timed(replace(decided.optimization, precision="32-true", compile=COMPILED))


def test_the_trial_process_decides_auto_after_precision_and_compile(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = composed_run(tmp_path / "run", [f"data.source={small_corpus}", "optimization=fast"])
    optimization = replace(run.optimization, precision="32-true", compile=COMPILED)
    run = replace(run, optimization=optimization)
    narrow = timed_choices(run).fp8  # the recipe's 32-wide layers
    assert narrow.enabled is False
    assert narrow.reason.startswith("float8 layers of at most 32 features")
    calls: list[tuple] = []

    def float8_pays(model: Any, batch: Any, precision: str, compile_config: Any, *rest: Any):
        calls.append((precision, compile_config, *rest))
        return Float8Choice(True, "measured")

    monkeypatch.setattr(choices, "too_narrow_for_float8", lambda model: None)
    monkeypatch.setattr(choices, "float8_pays", float8_pays)
    chosen = timed_choices(run).fp8
    assert (chosen.enabled, chosen.reason) == (True, "measured")
    assert calls == [("32-true", COMPILED, run.optimization.fp8, run.trainer.max_steps)]


@pytest.mark.filterwarnings("ignore:float8 layers of at most")  # the width gate is lifted
def test_the_whole_float8_trial_runs_on_this_cpus_float8_matmuls(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial path a GPU takes, for real: torch's CPU float8 matmuls (not emulation),
    per-block compile, the measurement and the weighing; only the width gate is lifted."""
    monkeypatch.chdir(tmp_path)
    run = composed_run(tmp_path / "run", [f"data.source={small_corpus}", "optimization=fast"])
    run = replace(
        run, optimization=replace(run.optimization, precision="32-true", compile=COMPILED)
    )
    monkeypatch.setattr(choices, "too_narrow_for_float8", lambda model: None)
    chosen = timed_choices(run).fp8
    decided = re.fullmatch(
        r"tensorwise float8 steps measured (\d+\.\d\d)x the speed of 32-true ones \(compiled\)"
        r"(?: \(under the 1\.05x required\))?; \d+\.\d s more compilation against "
        r"\d+\.\d s saved over 6 steps(?:, beside other processes .*)?: (float8 on|kept off)",
        chosen.reason,
    )
    assert decided, chosen.reason
    assert float(decided[1]) > 0
    assert chosen.enabled is (decided[2] == "float8 on")


def test_a_trainer_built_without_the_runner_leaves_auto_off() -> None:
    auto = OptimizationConfig(fp8=AUTO)
    assert "float8" not in model_transforms(auto, "cuda")
    assert "float8" in model_transforms(OptimizationConfig(fp8=Float8Config(True)), "cuda")


def test_auto_with_emulation_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optimization.fp8.emulate=True cannot be chosen"):
        Float8Config(enabled="auto", emulate=True)
    args = [
        "train",
        *TINY,
        "optimization=fast",
        "optimization.fp8.emulate=true",
        "hydra.run.dir=run",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "lightning-accel: error: optimization.fp8.emulate=True cannot be chosen by "
        "optimization.fp8.enabled=auto, which keeps float8 only where it is faster and "
        "emulation never is; set optimization.fp8.enabled=true to test float8's numerics."
    ]
    assert list(tmp_path.iterdir()) == [], "nothing started, nothing written"


def test_the_fast_profile_records_its_float8_choice(tmp_path: Path, small_corpus: Path) -> None:
    args = [
        "train", *TINY, f"data.source={small_corpus}", "optimization=fast", "callbacks=minimal",
        "optimization.compile.enabled=false", "hydra.run.dir=out",
    ]  # fmt: skip
    result, summary, config = trained(tmp_path, args)
    assert config["fp8"]["enabled"] is False
    assert config["fp8"]["reason"] == summary["fp8_reason"]
    assert summary["fp8_reason"].startswith("float8 needs a GPU with float8 tensor cores")
    assert summary["fp8"] is None and "float8" not in summary["transforms"]
    assert "fp8 off: float8 needs a GPU" in result.stderr
