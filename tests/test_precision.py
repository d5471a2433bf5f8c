"""Precision ``auto`` per hardware, and refusals of what the hardware cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from helpers import TINY, run_cli

from lightning_accel import precision
from lightning_accel.errors import ConfigError
from lightning_accel.machine import THIS_MACHINE, CpuFacts, CudaDevice, CudaFacts, MachineFacts
from lightning_accel.models import GPTLanguageModel
from lightning_accel.optimize.measured_choices import (
    Candidate,
    StepTimes,
    fastest_precision,
    step_times,
)


def gpu(capability: tuple[int, int]) -> MachineFacts:
    """A machine with one GPU of compute ``capability``."""
    device = CudaDevice(0, "GPU", capability, 16.0)
    return MachineFacts(versions={}, cuda=CudaFacts(devices=(device,)))


@pytest.mark.parametrize(
    ("units", "expected"),
    [("amx_bf16", "bf16-mixed"), ("avx512_bf16", "bf16-mixed"), (None, "32-true")],
)
def test_auto_on_cpu_follows_bf16_matrix_units(units: str | None, expected: str) -> None:
    machine = MachineFacts(versions={}, cpu=CpuFacts(features=(units,) if units else ()))
    choice = precision.resolve_precision("auto", "cpu", machine=machine)
    assert choice.precision == expected
    assert ("bf16 matrix units" in choice.reason) and ((units or "no ") in choice.reason)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"), ((7, 5), "16-mixed")],
)
def test_auto_on_gpus_follows_compute_capability(
    capability: tuple[int, int], expected: str
) -> None:
    choice = precision.resolve_precision("auto", "cuda", machine=gpu(capability))
    assert choice.precision == expected
    assert f"sm_{capability[0]}{capability[1]}" in choice.reason


def test_auto_on_tpu_is_bf16() -> None:
    assert precision.resolve_precision("auto", "tpu").precision == "bf16-mixed"


def test_this_machine_resolves_auto_to_a_runnable_cpu_precision() -> None:
    choice = precision.resolve_precision("auto", "cpu")
    assert choice.precision == ("bf16-mixed" if THIS_MACHINE.cpu_bf16_units() else "32-true")


def test_fp16_on_cpu_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ConfigError, match="'16-mixed' cannot run on cpu; valid choices: auto, 32-true"
    ):
        precision.resolve_precision("16-mixed", "cpu")


def test_bf16_on_an_old_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="compute capability 8.0"):
        precision.resolve_precision("bf16-mixed", "cuda", machine=gpu((7, 0)))


def test_fp16_mixed_under_fsdp2_is_refused() -> None:
    with pytest.raises(ConfigError, match="not supported by the fsdp2 strategy"):
        precision.resolve_precision("16-mixed", "cuda", "fsdp2", machine=gpu((9, 0)))
    chosen = precision.resolve_precision("bf16-mixed", "cuda", "fsdp2", machine=gpu((9, 0)))
    assert chosen.precision == "bf16-mixed"


CANDIDATE = precision.PrecisionChoice("bf16-mixed", "the CPU has bf16 matrix units: amx_bf16")


def _timings(seconds: dict[str, float]):  # noqa: ANN202 - a stand-in for the measurement
    return lambda module, batch, candidates: {
        name: StepTimes(seconds[c.precision], seconds[c.precision])
        for name, c in candidates.items()
    }


def test_fastest_keeps_the_reduced_precision_when_it_measures_faster() -> None:
    choice = fastest_precision(CANDIDATE, None, None, _timings({"32-true": 1.8, "bf16-mixed": 1.0}))
    assert choice.precision == "bf16-mixed"
    assert "amx_bf16" in choice.reason and "measured 1.80x" in choice.reason


def test_fastest_falls_back_to_fp32_when_the_reduced_precision_is_slower() -> None:
    choice = fastest_precision(CANDIDATE, None, None, _timings({"32-true": 1.0, "bf16-mixed": 1.4}))
    assert choice.precision == "32-true"
    assert "measured 0.71x" in choice.reason and "kept 32-true" in choice.reason


def test_fastest_needs_a_clear_margin() -> None:
    choice = fastest_precision(
        CANDIDATE, None, None, _timings({"32-true": 1.02, "bf16-mixed": 1.0})
    )
    assert choice.precision == "32-true"


def test_measuring_leaves_the_model_untouched() -> None:
    torch.manual_seed(0)
    module = GPTLanguageModel(n_layer=1, d_model=32, n_head=2, seq_len=16)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    batch = (torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16)))
    candidates = {"fp32": Candidate("32-true"), "bf16": Candidate("bf16-mixed")}
    timings = step_times(module, batch, candidates, min_seconds=0.0, min_rounds=2)
    assert set(timings) == {"fp32", "bf16"}
    assert all(t.first > 0 and t.steady > 0 for t in timings.values())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())


class _RecordingModule(pl.LightningModule):
    """A linear model whose training steps record whether they ran under autocast."""

    calls: list[str] = []  # shared by the copies the trial makes

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        _RecordingModule.calls.append("bf16" if torch.is_autocast_enabled("cpu") else "fp32")
        return self.layer(batch).sum()


def test_trial_steps_alternate_so_no_candidate_always_runs_second() -> None:
    _RecordingModule.calls = []
    candidates = {"fp32": Candidate("32-true"), "bf16": Candidate("bf16-mixed")}
    step_times(_RecordingModule(), torch.ones(2, 4), candidates, min_seconds=0.0, min_rounds=4)
    first_steps, rounds = _RecordingModule.calls[:2], _RecordingModule.calls[2:]
    assert first_steps == ["fp32", "bf16"]
    assert rounds == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16", "bf16", "fp32"]


def test_trial_runs_until_each_candidate_has_its_minimum_time_within_the_round_cap() -> None:
    _RecordingModule.calls = []
    candidates = {"fp32": Candidate("32-true")}
    step_times(_RecordingModule(), torch.ones(2, 4), candidates, min_seconds=60.0, max_rounds=7)
    assert len(_RecordingModule.calls) == 1 + 7


def test_fast_profile_records_its_measured_choice(tmp_path: Path, small_corpus: Path) -> None:
    args = ["train", *TINY, f"data.source={small_corpus}", "optimization=fast", "callbacks=minimal"]
    result = run_cli([*args, "hydra.run.dir=out"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["optimization"]["precision"] == summary["precision"]
    expected = "bf16-mixed" if THIS_MACHINE.cpu_bf16_units() else "32-true"
    if expected == "32-true":
        assert summary["precision_reason"] == "the CPU has no bf16 matrix units"
    else:
        assert "measured" in summary["precision_reason"]
        assert summary["precision"] in ("bf16-mixed", "32-true")


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_attention_runs_in_fp32_on_cpus_under_bf16(
    monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    # the CPU's bf16 attention kernel is several times slower than its fp32 one
    seen: list[torch.dtype] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(q.dtype)
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    model = GPTLanguageModel(n_layer=2, d_model=32, n_head=2, seq_len=16)
    tokens = torch.randint(0, 256, (2, 16))
    if precision == "bf16-true":
        logits = model.to(torch.bfloat16)(tokens)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens)
    assert seen == [torch.float32, torch.float32]
    assert logits.dtype == torch.bfloat16, "the layers around attention stay in bf16"
