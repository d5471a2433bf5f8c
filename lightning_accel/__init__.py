"""lightning-accel: strategies, precision plugins, model optimizations, DataModules and
callbacks for PyTorch Lightning, chosen per run by configuration.

Drop-in use::

    import lightning_accel as la
    trainer = la.build_trainer(hardware="cpu", optimization="default", max_steps=100)
    trainer.fit(MyLightningModule(), datamodule=MyDataModule())
"""

import importlib
import os
from typing import Any

# Where each public name lives; imported on first use (PEP 562), so that the command line
# can check a run's config before torch and lightning are imported.
_PUBLIC = {
    "build_trainer": "lightning_accel.trainer_factory",
    "trainer_arguments": "lightning_accel.trainer_factory",
    "RunSummary": "lightning_accel.callbacks",
    "PreemptionCheckpoint": "lightning_accel.callbacks",
    "RunCheckpoint": "lightning_accel.callbacks",
    "RunProgressBar": "lightning_accel.callbacks",
    "RunModelSummary": "lightning_accel.callbacks",
    "SpeedMonitor": "lightning_accel.callbacks",
    "StepBoundaryStop": "lightning_accel.callbacks",
    "XLARecompileGuard": "lightning_accel.callbacks",
    "ActivationCheckpointingConfig": "lightning_accel.config",
    "CompileConfig": "lightning_accel.config",
    "Float8Config": "lightning_accel.config",
    "HardwareConfig": "lightning_accel.config",
    "OptimizationConfig": "lightning_accel.config",
    "TrainerConfig": "lightning_accel.config",
    "TokenDataModule": "lightning_accel.data",
    "ImageDataModule": "lightning_accel.data",
    "SyntheticImageDataModule": "lightning_accel.data",
    "SyntheticTokenDataModule": "lightning_accel.data",
    "ConfigError": "lightning_accel.errors",
    "GPTLanguageModel": "lightning_accel.models",
    "ImageClassifier": "lightning_accel.models",
    "ResNet": "lightning_accel.models",
    "ModelOptimizations": "lightning_accel.optimize",
    "AccelDDPStrategy": "lightning_accel.strategies",
    "FSDP2Strategy": "lightning_accel.strategies",
    "PJRTAccelerator": "lightning_accel.xla.accelerator",
    "XLASPMDStrategy": "lightning_accel.xla.spmd",
    "XLASingleStrategy": "lightning_accel.xla.strategies",
    "XLAProcessesStrategy": "lightning_accel.xla.strategies",
    "AccelXLAPrecision": "lightning_accel.xla.precision",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lightning_accel' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


# `import lightning_accel` registers the pack's strategy names with Lightning, so that
# Trainer(strategy="fsdp2") works. The command line defers this (and with it the import of
# torch and lightning) until its config checks have passed.
if not os.environ.get("LIGHTNING_ACCEL_DEFER_IMPORTS"):
    importlib.import_module("lightning_accel.strategies")
    importlib.import_module("lightning_accel.xla.accelerator")
    importlib.import_module("lightning_accel.xla.strategies")

__version__ = "0.1.0"

__all__ = [  # noqa: F822 - provided by __getattr__
    "AccelDDPStrategy",
    "AccelXLAPrecision",
    "PJRTAccelerator",
    "XLARecompileGuard",
    "XLASPMDStrategy",
    "FSDP2Strategy",
    "ActivationCheckpointingConfig",
    "CompileConfig",
    "ConfigError",
    "Float8Config",
    "GPTLanguageModel",
    "HardwareConfig",
    "ImageClassifier",
    "ImageDataModule",
    "ModelOptimizations",
    "OptimizationConfig",
    "PreemptionCheckpoint",
    "RunCheckpoint",
    "RunModelSummary",
    "RunProgressBar",
    "ResNet",
    "RunSummary",
    "SpeedMonitor",
    "StepBoundaryStop",
    "SyntheticImageDataModule",
    "SyntheticTokenDataModule",
    "TokenDataModule",
    "TrainerConfig",
    "build_trainer",
    "trainer_arguments",
]
