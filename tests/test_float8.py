"""Float8 training: which Linear layers convert, the hardware refusals, the fp8 peak, and
the numerics of 20 emulated steps against bf16-mixed."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from helpers import MODEL, TINY, Runs, max_difference, run_cli

from lightning_accel import devices
from lightning_accel.config import Float8Config, OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.machine import CpuFacts, CudaDevice, CudaFacts, MachineFacts
from lightning_accel.models import GPT, GPTConfig
from lightning_accel.optimize import apply_model_optimizations, check_model_optimizations
from lightning_accel.optimize.float8 import (
    convert_to_float8,
    float8_layers,
    float8_matmul_format,
    float8_summary,
    narrow_layers_note,
)
from lightning_accel.precision import resolve_float8

EMULATED = OptimizationConfig(fp8=Float8Config(enabled=True, emulate=True))
CPU_ONLY = MachineFacts(versions={}, cpu=CpuFacts())
# The training losses of 20 steps of the small GPT in emulated float8 stay this close to
# bf16-mixed's (measured on a 2-core CPU: 1.2e-3 tensorwise, 9.5e-4 rowwise; bf16-mixed
# against fp32: 2.5e-4).
LOSS_TOLERANCE = 5e-3
BF16 = "optimization.precision=bf16-mixed"
FP8 = ["optimization.fp8.enabled=true", "optimization.fp8.emulate=true"]


def gpu(capability: tuple[int, int]) -> MachineFacts:
    """A machine with one GPU of compute ``capability``."""
    return MachineFacts(
        versions={}, cuda=CudaFacts(devices=(CudaDevice(0, "GPU", capability, 80.0),))
    )


def _gpt(d_model: int = 32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(seq_len=16, n_layer=2, d_model=d_model, n_head=2))


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_linear_layers_that_qualify_train_in_float8_and_the_tied_head_does_not(
    recipe: str,
) -> None:
    reference, model = _gpt(), _gpt()
    keys = list(model.state_dict())
    optimization = OptimizationConfig(fp8=Float8Config(True, recipe=recipe, emulate=True))
    apply_model_optimizations(model, optimization)
    summary = float8_summary(model)
    assert summary is not None and summary["emulated"]
    assert summary["layers"] == [
        f"blocks.{i}.{layer}"
        for i in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    assert summary["kept"] == {"head": "its weight is tied to another module's"}
    assert model.head.weight is model.token_embedding.weight
    assert list(model.state_dict()) == keys, "checkpoints stay portable"
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = reference(tokens).float(), model(tokens).float()
    assert 0 < (actual - expected).abs().max() < 0.05, "float8 casts, close to bf16"
    actual.logsumexp(-1).mean().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_a_model_without_a_qualifying_layer_is_refused_before_it_is_built() -> None:
    with torch.device("meta"):
        narrow = _gpt(d_model=24)  # qkv: 24 -> 72
    with pytest.raises(ConfigError) as refused:
        check_model_optimizations(narrow, EMULATED)
    assert str(refused.value) == (
        "optimization.fp8.enabled=True finds no Linear layer of GPT to convert "
        "(blocks.0.attn.qkv: 24 -> 72 features, not both multiples of 16); make the "
        "model's widths multiples of 16 (model.d_model for the GPT recipe)."
    )


def test_float8_runs_on_float8_tensor_cores_or_emulated_and_is_refused_elsewhere() -> None:
    fp8 = Float8Config(enabled=True)
    assert resolve_float8(Float8Config(), "cpu", machine=CPU_ONLY) is None
    assert resolve_float8(fp8, "cuda", machine=gpu((9, 0))) == (
        "the GPU (sm_90) has float8 tensor cores"
    )
    assert "sm_89" in str(resolve_float8(fp8, "cuda", machine=gpu((8, 9))))
    assert str(resolve_float8(fp8, "cuda", machine=CPU_ONLY)).startswith("assumed"), "planned away"
    for accelerator, machine, has in (
        ("cuda", gpu((8, 0)), "this GPU is sm_80"),
        ("cpu", CPU_ONLY, "this run's device (cpu) has none"),
    ):
        with pytest.raises(
            ConfigError, match=re.escape(f"compute capability 8.9 or newer) and {has};")
        ):
            resolve_float8(fp8, accelerator, machine=machine)
    assert "emulated on cpu" in str(resolve_float8(EMULATED.fp8, "cpu", machine=CPU_ONLY))
    with pytest.raises(ConfigError, match="tensor parallelism"):
        resolve_float8(fp8, "cuda", tensor_parallel=2, machine=gpu((9, 0)))


@pytest.mark.filterwarnings("ignore:float8 layers of at most")  # its 32-wide model
def test_mfu_under_float8_is_against_the_fp8_peak_or_the_emulations_fp32_one() -> None:
    h100 = devices.gpu_peak("NVIDIA H100 80GB HBM3", "bf16-mixed", "highest", "fp8")
    assert h100 is not None and h100.flops_per_second == pytest.approx(1978.9e12)
    assert h100.source == "H100 SXM datasheet, dense fp8"
    assert devices.gpu_peak("NVIDIA A100-SXM4-80GB", "bf16-mixed", "high", "fp8") is None
    plain, emulated, converted = _gpt(), _gpt(), _gpt()
    apply_model_optimizations(emulated, EMULATED)
    apply_model_optimizations(converted, OptimizationConfig(fp8=Float8Config(enabled=True)))
    assert [float8_matmul_format(m) for m in (plain, emulated, converted)] == [None, "fp32", "fp8"]


def test_float8_without_emulation_is_refused_on_this_cpu_before_anything_starts(
    tmp_path: Path,
) -> None:
    result = run_cli(["train", *TINY, "optimization=fp8", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "lightning-accel: error: optimization.fp8.enabled=True needs a GPU with float8 tensor "
        "cores (compute capability 8.9 or newer) and this run's device (cpu) has none; "
        "optimization.fp8.emulate=true runs torchao's emulation instead (for numerics, not "
        "speed)."
    ]
    assert list(tmp_path.iterdir()) == [], "nothing started, nothing written"


def test_twenty_emulated_float8_steps_stay_close_to_bf16_mixed(runs: Runs) -> None:
    reference = runs.train("single_bf16", "cpu", 1, BF16)
    run = runs.train("single_fp8_emulated", "cpu", 1, BF16, *FP8)
    difference = max_difference(runs.losses(reference), runs.losses(run))
    assert 0 < difference < LOSS_TOLERANCE, difference
    summary, bf16_summary = runs.summary(run), runs.summary(reference)
    layers = MODEL["n_layer"] * 4  # the blocks' qkv, proj and MLP layers; the tied head kept
    assert summary["transforms"] == ["float8"]
    assert len(summary["fp8"]["layers"]) == layers and summary["fp8"]["emulated"]
    assert summary["fp8"]["reason"].startswith("emulated on cpu")
    assert summary["flops_per_step"] == bf16_summary["flops_per_step"]
    assert summary["peak_flops_source"].startswith("measured float32 matmul")
    assert bf16_summary["peak_flops_source"].startswith("measured bfloat16 matmul")


@pytest.mark.slow
def test_float8_all_gathers_under_fsdp2_train_like_one_process(runs: Runs) -> None:
    """2 FSDP2 ranks, weights all-gathered in float8 with scales precomputed after each
    step, against one process (both emulated)."""
    single = runs.losses(runs.train("single_fp8_emulated", "cpu", 1, BF16, *FP8))
    all_gather = "optimization.fp8.fsdp_float8_all_gather=true"
    sharded = runs.train("fsdp2_fp8_emulated", "fsdp2_cpu", 2, BF16, *FP8, all_gather)
    assert runs.summary(sharded)["fp8"]["fsdp_float8_all_gather"]
    assert max_difference(single, runs.losses(sharded)) < LOSS_TOLERANCE  # measured: 1.8e-3


def test_float8_on_layers_narrower_than_its_break_even_warns_and_emulation_does_not() -> None:
    with pytest.warns(UserWarning, match="float8 layers of at most 32 features .* likely slower"):
        convert_to_float8(_gpt(d_model=32), Float8Config(enabled=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # emulation measures numerics, not speed: no warning
        convert_to_float8(_gpt(d_model=32), Float8Config(enabled=True, emulate=True))
    with torch.device("meta"):
        wide = _gpt(d_model=2048)
    assert narrow_layers_note(wide, float8_layers(wide)[0]) is None
