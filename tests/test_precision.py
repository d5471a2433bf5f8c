"""Precision ``auto`` per hardware, and refusals of what the hardware cannot run."""

from __future__ import annotations

import pytest

from lightning_accel import precision
from lightning_accel.errors import ConfigError


@pytest.mark.parametrize(
    ("units", "expected"),
    [("amx_bf16", "bf16-mixed"), ("avx512_bf16", "bf16-mixed"), (None, "32-true")],
)
def test_auto_on_cpu_follows_bf16_matrix_units(
    units: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    choice = precision.resolve_precision("auto", "cpu")
    assert choice.precision == expected
    assert ("bf16 matrix units" in choice.reason) and ((units or "no ") in choice.reason)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16-mixed"), ((8, 0), "bf16-mixed"), ((7, 5), "16-mixed")],
)
def test_auto_on_gpus_follows_compute_capability(
    capability: tuple[int, int], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cuda_capability", lambda: capability)
    choice = precision.resolve_precision("auto", "cuda")
    assert choice.precision == expected
    assert f"sm_{capability[0]}{capability[1]}" in choice.reason


def test_auto_on_tpu_is_bf16() -> None:
    assert precision.resolve_precision("auto", "tpu").precision == "bf16-mixed"


def test_this_machine_resolves_auto_to_a_runnable_cpu_precision() -> None:
    choice = precision.resolve_precision("auto", "cpu")
    assert choice.precision == ("bf16-mixed" if precision.cpu_bf16_units() else "32-true")


def test_fp16_on_cpu_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ConfigError, match="'16-mixed' cannot run on cpu; valid choices: auto, 32-true"
    ):
        precision.resolve_precision("16-mixed", "cpu")


def test_bf16_on_an_old_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cuda_capability", lambda: (7, 0))
    with pytest.raises(ConfigError, match="compute capability 8.0"):
        precision.resolve_precision("bf16-mixed", "cuda")


def test_fp16_mixed_under_fsdp2_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cuda_capability", lambda: (9, 0))
    with pytest.raises(ConfigError, match="not supported by the fsdp2 strategy"):
        precision.resolve_precision("16-mixed", "cuda", "fsdp2")
    assert precision.resolve_precision("bf16-mixed", "cuda", "fsdp2").precision == "bf16-mixed"
