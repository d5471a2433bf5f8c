"""XLA pieces that need no torch_xla: mesh shapes, parameter split rules, the recompile
guard's logic on given metrics, precision per PJRT device, and the missing-extra error."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from lightning_accel.callbacks.recompile_guard import RecompilationError, XLARecompileGuard
from lightning_accel.config import HardwareConfig
from lightning_accel.errors import ConfigError
from lightning_accel.precision import resolve_precision
from lightning_accel.xla import runtime
from lightning_accel.xla.spmd import mesh_shape, parameter_spec


@pytest.mark.parametrize(
    ("data", "fsdp", "expected"), [(-1, 1, (4, 1)), (1, -1, (1, 4)), (2, 2, (2, 2))]
)
def test_mesh_axes_fill_the_devices(data: int, fsdp: int, expected: tuple[int, int]) -> None:
    assert mesh_shape(data, fsdp, 4) == expected


@pytest.mark.parametrize(("data", "fsdp"), [(3, 1), (-1, 3), (-1, -1)])
def test_a_mesh_that_does_not_fit_the_devices_names_their_count(data: int, fsdp: int) -> None:
    with pytest.raises(ConfigError, match="hardware.strategy_options.mesh"):
        mesh_shape(data, fsdp, 4)


def test_spmd_checkpoint_form_is_checked_by_the_schema() -> None:
    options = {"data": 1, "fsdp": -1, "checkpoint": "sharded"}
    assert HardwareConfig(strategy="xla_spmd", strategy_options=options).strategy_options == options
    with pytest.raises(ConfigError, match=r"checkpoint='full' .*valid choices: gathered, sharded"):
        HardwareConfig(strategy="xla_spmd", strategy_options={"checkpoint": "full"})


def test_parameters_split_on_their_first_dimension_when_the_axis_divides_it() -> None:
    assert parameter_spec((128, 32), 4) == ("fsdp", None)
    assert parameter_spec((6, 32), 4) == (None, None), "4 does not divide 6: kept whole"
    assert parameter_spec((128,), 1) == (None,), "no fsdp axis: replicated"
    assert parameter_spec((), 4) == ()


class FakeTrainer:
    def __init__(self) -> None:
        self.global_step = 0
        self.sanity_checking = False


class FakeXLA:
    """Compilation metrics that a test sets by hand."""

    def __init__(self) -> None:
        self.compilations = 0

    def read(self) -> tuple[int, float]:
        return self.compilations, 1.5


def _run(
    compiling_steps: dict[int, int],
    steps: int,
    validate_after: tuple[int, ...] = (),
    resumed_at: int = 0,
    **options: Any,
) -> XLARecompileGuard:
    """Drive a guard through the steps after ``resumed_at`` up to ``steps``; step s compiles
    ``compiling_steps[s]`` graphs, and every validation compiles 5 graphs of its own."""
    xla = FakeXLA()
    guard = XLARecompileGuard(warmup_steps=2, read_metrics=xla.read, **options)
    guard.active = True
    trainer = FakeTrainer()
    trainer.global_step = resumed_at
    guard.on_train_start(trainer, None)  # type: ignore[arg-type]
    for step in range(resumed_at + 1, steps + 1):
        guard.on_train_batch_start(trainer)  # type: ignore[arg-type]
        xla.compilations += compiling_steps.get(step, 0)
        trainer.global_step = step
        guard.on_train_batch_end(trainer)  # type: ignore[arg-type]
        if step in validate_after:
            xla.compilations += 5
            guard.on_validation_end(trainer, None)  # type: ignore[arg-type]
    return guard


def test_guard_accepts_compilations_during_warm_up_only() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning here would fail the test
        assert _run({1: 3, 2: 1}, 6).compilations == 4
    with pytest.warns(UserWarning, match="1 new graph.*training step 4 after warm-up"):
        _run({1: 3, 2: 1, 4: 1}, 6)


def test_guard_expects_a_new_step_graph_after_the_first_two_validations_only() -> None:
    compiles = {1: 3, 2: 1, 5: 1, 7: 1}  # the steps after the validations at 4 and 6
    guard = _run(compiles, 8, validate_after=(4, 6, 8), action="fail")
    # counted at the last step, before its own validation: 6 in steps, 10 in validations
    assert guard.compilations == 6 + 10, "validation compilations are counted, not flagged"
    with pytest.raises(RecompilationError, match="training step 9"):
        _run({**compiles, 9: 1}, 9, validate_after=(4, 6, 8), action="fail")


def test_a_resumed_run_warms_up_again_from_the_step_it_resumed_at() -> None:
    # a new process compiles its step graph anew, wherever the run resumed
    assert _run({11: 3, 12: 1}, 14, resumed_at=10, action="fail").compilations == 4
    with pytest.raises(RecompilationError, match="training step 13"):
        _run({11: 3, 12: 1, 13: 1}, 14, resumed_at=10, action="fail")


def test_guard_fails_when_asked_to() -> None:
    with pytest.raises(RecompilationError, match="training step 5"):
        _run({1: 1, 5: 3}, 5, action="fail")


def test_guard_reports_compilations_for_the_summary() -> None:
    guard = _run({1: 2}, 2)
    assert guard.summary_figures() == {"xla_compilations": 2, "xla_compile_seconds": 1.5}
    guard.active = False
    assert guard.summary_figures() == {}, "nothing to report off XLA"


def test_auto_precision_on_pjrt_follows_the_device_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert resolve_precision("auto", "pjrt", "xla_spmd").precision == "bf16-mixed"
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    assert resolve_precision("auto", "pjrt", "auto").precision == "32-true"
    with pytest.raises(ConfigError, match="cannot run on pjrt"):
        resolve_precision("16-mixed", "pjrt", "auto")


@pytest.mark.skipif(runtime.installed(), reason="checks the error shown without torch_xla")
def test_xla_profile_without_torch_xla_names_the_extra() -> None:
    from lightning_accel.config import HardwareConfig
    from lightning_accel.hardware import resolve_hardware

    with pytest.raises(ConfigError, match=r"pip install 'lightning-accel\[xla\]'"):
        resolve_hardware(HardwareConfig(accelerator="pjrt", pjrt_device="CPU"))
