"""lightning-accel: strategies, precision plugins, model optimizations, DataModules and
callbacks for PyTorch Lightning, chosen per run by configuration.

Drop-in use::

    import lightning_accel as la
    trainer = la.build_trainer(hardware="cpu", optimization="default", max_steps=100)
    trainer.fit(MyLightningModule(), datamodule=MyDataModule())
"""

from lightning_accel.build import build_trainer, trainer_arguments
from lightning_accel.callbacks import RunSummary
from lightning_accel.config import (
    ActivationCheckpointingConfig,
    CompileConfig,
    HardwareConfig,
    OptimizationConfig,
    TrainerConfig,
)
from lightning_accel.data import TokenDataModule
from lightning_accel.errors import ConfigError
from lightning_accel.models import GPTLanguageModel
from lightning_accel.optimize import ModelOptimizations
from lightning_accel.strategies import AccelDDPStrategy, FSDP2Strategy

__version__ = "0.1.0"

__all__ = [
    "AccelDDPStrategy",
    "FSDP2Strategy",
    "ActivationCheckpointingConfig",
    "CompileConfig",
    "ConfigError",
    "GPTLanguageModel",
    "HardwareConfig",
    "ModelOptimizations",
    "OptimizationConfig",
    "RunSummary",
    "TokenDataModule",
    "TrainerConfig",
    "build_trainer",
    "trainer_arguments",
]
