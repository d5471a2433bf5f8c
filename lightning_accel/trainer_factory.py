"""The Trainer construction helper shared by drop-in users and the CLI runner."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.strategies import DDPStrategy, Strategy, StrategyRegistry, XLAStrategy
from torch.nn.parallel import DistributedDataParallel

from lightning_accel import strategies  # noqa: F401 - importing registers the strategies
from lightning_accel.argument_types import parameter_types, require_fits
from lightning_accel.checkpoints import AtomicCheckpointIO
from lightning_accel.config import HardwareConfig, OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.optimize import ModelOptimizations
from lightning_accel.plan.run import RunPlan, plan_run
from lightning_accel.strategies.step_signals import StepBoundaryStop, lightning_may_act_mid_step
from lightning_accel.xla.accelerator import PJRTAccelerator
from lightning_accel.xla.spmd import XLASPMDStrategy
from lightning_accel.xla.strategies import XLAProcessesStrategy, XLASingleStrategy

# what Lightning (its trainer, or its DDPStrategy for DistributedDataParallel) sets itself
DDP_SET_BY_LIGHTNING = (
    *("accelerator", "parallel_devices", "cluster_environment", "checkpoint_io"),
    *("precision_plugin", "module", "device_ids", "output_device", "process_group"),
    *("device_mesh", "dim"),
)


def build_strategy(name: str, options: dict[str, Any]) -> Strategy | str:
    """The registered strategy ``name`` built with its registered defaults and ``options``
    (``"auto"`` stays a name for Lightning to resolve)."""
    if name == "auto" and not options:
        return name
    if name not in StrategyRegistry:
        raise ConfigError(
            "hardware.strategy",
            name,
            "is not a registered strategy",
            StrategyRegistry.available_strategies(),
        )
    entry = StrategyRegistry[name]
    accepted = dict(inspect.signature(entry["strategy"]).parameters)
    if isinstance(entry["strategy"], type) and issubclass(entry["strategy"], DDPStrategy):
        # Lightning's DDPStrategy passes the keywords it does not take on to
        # DistributedDataParallel, which would refuse an unknown one inside the ranks
        accepted.pop("kwargs", None)
        accepted |= inspect.signature(DDPStrategy).parameters
        accepted |= inspect.signature(DistributedDataParallel).parameters
        for set_by_lightning in (*DDP_SET_BY_LIGHTNING, "kwargs"):
            accepted.pop(set_by_lightning, None)
    types = parameter_types(entry["strategy"])
    for key, value in options.items():
        if key not in accepted and "kwargs" not in accepted:
            raise ConfigError(
                f"hardware.strategy_options.{key}",
                value,
                f"is not an option of {name}",
                sorted(accepted),
            )
        if key in types:
            require_fits(f"hardware.strategy_options.{key}", value, types[key], name)
    return entry["strategy"](**{**entry["init_params"], **options})


def plan_arguments(plan: RunPlan) -> dict[str, Any]:
    """The ``lightning.Trainer`` keyword arguments a :class:`RunPlan` stands for."""
    arguments = {
        "accelerator": plan.accelerator,
        "devices": plan.devices,
        "num_nodes": plan.num_nodes,
        "strategy": build_strategy(plan.strategy, plan.strategy_options),
        "precision": plan.precision.precision,
        "accumulate_grad_batches": plan.optimization.accumulate_grad_batches,
        "gradient_clip_val": plan.optimization.gradient_clip_val,
    }
    if plan.accelerator == "pjrt":
        _xla_arguments(arguments)
    else:
        # XLA keeps its own checkpoint I/O (it gathers device tensors first)
        arguments["plugins"] = [AtomicCheckpointIO()]
    return arguments


def _xla_arguments(arguments: dict[str, Any]) -> None:
    """On XLA the accelerator is passed as an instance (Lightning picks its XLA strategies
    for XLA accelerator instances, not for registered names), the precision is a plugin
    instance (Lightning's own sets process-wide environment switches), an SPMD run is one
    process on one logical device, and Lightning's own XLA strategies (``auto``, ``xla``)
    become the pack's, which feed batches through the parallel device loader, keep exact
    mid-epoch resume and run the multi-process path at one device too."""
    from lightning_accel.xla.precision import AccelXLAPrecision

    arguments["accelerator"] = PJRTAccelerator()
    arguments["plugins"] = [AccelXLAPrecision(arguments.pop("precision"))]
    strategy = arguments["strategy"]
    if isinstance(strategy, XLASPMDStrategy):
        arguments["devices"] = 1
    elif strategy == "auto":
        one = arguments["devices"] == 1
        arguments["strategy"] = XLASingleStrategy() if one else XLAProcessesStrategy()
    elif type(strategy) is XLAStrategy:
        arguments["strategy"] = XLAProcessesStrategy()


def trainer_arguments(
    hardware: HardwareConfig | str = "auto",
    optimization: OptimizationConfig | str = "default",
) -> dict[str, Any]:
    """The ``lightning.Trainer`` keyword arguments a pair of profiles stands for on this
    machine.

    Useful to build the Trainer yourself: ``Trainer(**trainer_arguments("cpu"), max_steps=10)``
    (model transforms then need :class:`~lightning_accel.optimize.ModelOptimizations`).
    """
    return plan_arguments(plan_run(hardware, optimization))


def build_trainer(
    hardware: HardwareConfig | str = "auto",
    optimization: OptimizationConfig | str = "default",
    callbacks: list[pl.Callback] | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """A ``lightning.Trainer`` set up for a hardware and an optimization profile.

    Args:
        hardware: a :class:`HardwareConfig` or a profile name (``"auto"``, ``"cpu"``, ...).
        optimization: an :class:`OptimizationConfig` or a profile name (``"default"``, ...).
        callbacks: your callbacks; the profile's model transforms are added to them, and,
            where Lightning could stop or save inside an optimizer step (gradient
            accumulation, SLURM auto-requeue), a :class:`StepBoundaryStop` unless they hold
            one.
        **trainer_kwargs: anything else ``lightning.Trainer`` takes (``max_steps``,
            ``logger``, ...); these win over the profiles' values.

    Example:
        >>> trainer = build_trainer("cpu", "default", max_steps=100)  # doctest: +SKIP
        >>> trainer.fit(MyLightningModule(), datamodule=MyDataModule())  # doctest: +SKIP
    """
    plan = plan_run(hardware, optimization)
    arguments = plan_arguments(plan)
    plugins = list(arguments.pop("plugins", []))
    user_plugins = trainer_kwargs.pop("plugins", None) or []
    user_plugins = user_plugins if isinstance(user_plugins, list) else [user_plugins]
    if any(isinstance(p, CheckpointIO) for p in user_plugins):
        plugins = [p for p in plugins if not isinstance(p, CheckpointIO)]
    arguments.update(trainer_kwargs)
    arguments["plugins"] = [*plugins, *user_plugins]
    transforms = ModelOptimizations(
        plan.optimization,
        plan.precision,
        plan.transforms,
        plan.hardware.strategy_reason,
        plan.float8,
    )
    run_callbacks = [*(callbacks or []), transforms]
    accumulation = arguments.get("accumulate_grad_batches") or 1
    if lightning_may_act_mid_step(accumulation, arguments["plugins"]) and not any(
        isinstance(c, StepBoundaryStop) for c in run_callbacks
    ):
        run_callbacks.append(StepBoundaryStop())
    arguments["callbacks"] = run_callbacks
    return pl.Trainer(**arguments)
