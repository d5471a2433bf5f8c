"""Strategies registered with Lightning on import: ``accel_ddp`` and ``fsdp2``."""

from lightning.pytorch.strategies import StrategyRegistry

from lightning_accel.strategies.comm_hooks import COMM_HOOKS
from lightning_accel.strategies.ddp import AccelDDPStrategy
from lightning_accel.strategies.fsdp2 import FSDP2Strategy

for _strategy in (AccelDDPStrategy, FSDP2Strategy):
    if _strategy.strategy_name not in StrategyRegistry:
        StrategyRegistry.register(
            _strategy.strategy_name, _strategy, description=(_strategy.__doc__ or "").split("\n")[0]
        )

__all__ = ["COMM_HOOKS", "AccelDDPStrategy", "FSDP2Strategy"]
