"""Strategies registered with Lightning on import: ``accel_ddp`` and ``fsdp2``."""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_accel.strategies.comm_hooks import COMM_HOOKS
from lightning_accel.strategies.ddp import AccelDDPStrategy
from lightning_accel.strategies.fsdp2 import FSDP2Strategy


def register(*strategies: type) -> None:
    """Register each strategy class with Lightning under its ``strategy_name`` (once)."""
    for strategy in strategies:
        name = strategy.strategy_name  # type: ignore[attr-defined]
        if name not in StrategyRegistry:
            description = (strategy.__doc__ or "").split("\n")[0]
            StrategyRegistry.register(name, strategy, description=description)


register(AccelDDPStrategy, FSDP2Strategy)

__all__ = ["COMM_HOOKS", "AccelDDPStrategy", "FSDP2Strategy", "register"]
