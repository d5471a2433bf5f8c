"""XLA pieces that need no torch_xla: mesh shapes, parameter split rules, the recompile
guard's logic on given metrics, precision per PJRT device, and the missing-extra error."""

from __future__ import annotations

import pytest

from lightning_accel.callbacks.recompile_guard import RecompilationError, XLARecompileGuard
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


def test_parameters_split_on_their_first_dimension_when_the_axis_divides_it() -> None:
    assert parameter_spec((128, 32), 4) == ("fsdp", None)
    assert parameter_spec((6, 32), 4) == (None, None), "4 does not divide 6: kept whole"
    assert parameter_spec((128,), 1) == (None,), "no fsdp axis: replicated"
    assert parameter_spec((), 4) == ()


class FakeTrainer:
    def __init__(self) -> None:
        self.global_step = 0
        self.sanity_checking = False


def _guard(counts: list[int], action: str = "warn") -> XLARecompileGuard:
    readings = iter(counts)
    guard = XLARecompileGuard(
        warmup_steps=2, action=action, read_metrics=lambda: (next(readings), 1.5)
    )  # type: ignore[arg-type]
    guard.active = True
    return guard


def _steps(guard: XLARecompileGuard, steps: int) -> None:
    trainer = FakeTrainer()
    for step in range(1, steps + 1):
        trainer.global_step = step
        guard.on_train_batch_end(trainer)  # type: ignore[arg-type]


def test_guard_accepts_compilations_during_warm_up_only() -> None:
    _steps(_guard([1, 2, 2, 2, 2]), 5)  # compiles at steps 1-2, then never
    with pytest.warns(UserWarning, match="1 new graph.*by step 4 \\(3 in all\\)"):
        _steps(_guard([1, 2, 2, 3, 3]), 5)


def test_guard_expects_new_graphs_after_the_first_two_validations_only() -> None:
    # steps 1-2 compile (warm-up); each step after the validations at 4, 6 and 8 compiles
    guard = _guard([1, 2, 2, 2, 3, 3, 4, 4, 5], action="fail")
    trainer = FakeTrainer()
    for step in range(1, 9):
        trainer.global_step = step
        guard.on_train_batch_end(trainer)  # type: ignore[arg-type]
        if step in (4, 6, 8):
            guard.on_validation_end(trainer, None)  # type: ignore[arg-type]
    trainer.global_step = 9
    with pytest.raises(RecompilationError, match="by step 9"):
        guard.on_train_batch_end(trainer)  # type: ignore[arg-type]


def test_guard_fails_when_asked_to() -> None:
    with pytest.raises(RecompilationError, match="by step 5"):
        _steps(_guard([1, 1, 1, 1, 4], action="fail"), 5)


def test_guard_reports_compilations_for_the_summary() -> None:
    guard = _guard([2, 2, 2])
    _steps(guard, 2)
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
