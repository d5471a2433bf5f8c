"""A run's model and one example batch, built without memory: the model on the meta device,
the batch from its DataModule's :class:`BatchExample` or the module's
``example_input_array`` (no data read), else the DataModule's first training batch."""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate

from lightning_accel.errors import ConfigError


@runtime_checkable
class BatchExample(Protocol):
    """A DataModule that can describe one training batch without reading data."""

    def example_batch(self) -> Any:
        """One training batch (per process) of tensors on the meta device: the shapes and
        dtypes the training step receives."""
        ...


def _target(node: dict[str, Any]) -> str:
    return str(node.get("_target_"))


def meta_model(node: dict[str, Any]) -> pl.LightningModule:
    """The LightningModule of a ``_target_`` node built on the meta device.

    Raises:
        ConfigError: it cannot be built there, or it allocated real memory anyway (naming the
            module that did).
    """
    try:
        with torch.device("meta"):
            model = instantiate(node, _convert_="all")
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure is the model's own
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):  # the model's own check, wrapped by Hydra
            raise cause from None
        raise ConfigError(
            "model._target_",
            _target(node),
            f"cannot be built on the meta device ({type(cause).__name__}: {cause})",
        ) from None
    if not isinstance(model, pl.LightningModule):
        raise ConfigError("model._target_", _target(node), "is not a LightningModule")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.device.type != "meta":
            raise ConfigError(
                "model._target_",
                _target(node),
                f"allocated real memory while built on the meta device: {name} is on "
                f"{tensor.device} (created with an explicit device?); the plan never "
                "allocates a model's weights",
            )
    return model


# how a user's module or DataModule lets the planner measure a run without reading data
DESCRIBE_A_BATCH = (
    "give the DataModule an example_batch() method returning meta tensors, or set "
    "example_input_array on the LightningModule"
)


def example_batch(datamodule: object | None, model: pl.LightningModule) -> tuple[Any, bool] | None:
    """One training batch on the meta device, and whether it is the module's ``forward``
    input rather than a batch for ``training_step``: from the DataModule's
    :class:`BatchExample`, else the module's ``example_input_array``; None when neither
    describes one."""
    if isinstance(datamodule, BatchExample):
        return datamodule.example_batch(), False
    example = getattr(model, "example_input_array", None)
    return None if example is None else (example, True)


def read_example_batch(datamodule: object, data_node: dict[str, Any]) -> Any:
    """The DataModule's first training batch moved to the meta device, for a DataModule that
    describes no batch without reading data: ``prepare_data`` and ``setup("fit")`` run as
    fitting runs them, and one batch is read.

    Raises:
        ConfigError: it is not a LightningDataModule, or reading the batch failed (naming
            the cause).
    """
    from lightning.fabric.utilities import move_data_to_device

    if not isinstance(datamodule, pl.LightningDataModule):
        raise ConfigError(
            "data._target_", _target(data_node), f"describes no batch; {DESCRIBE_A_BATCH}"
        )
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
    except Exception as error:  # noqa: BLE001 - any failure is the DataModule's own
        cause = (
            "it has no batches"
            if isinstance(error, StopIteration)
            else (f"{type(error).__name__}: {error}")
        )
        raise ConfigError(
            "data._target_",
            _target(data_node),
            f"describes no batch without reading data, and its first training batch could "
            f"not be read ({cause}); {DESCRIBE_A_BATCH}",
        ) from None
    return move_data_to_device(batch, torch.device("meta"))


def attach_trainer(model: pl.LightningModule, max_steps: int) -> None:
    """Give ``model`` a Trainer of ``max_steps`` steps on the CPU, for a
    ``configure_optimizers`` that reads it (schedules do), without Lightning's banner. A
    loop bounded by epochs (``max_steps=-1``) gets a stand-in length: outside ``fit`` the
    trainer cannot count its steps, and a schedule's length leaves the optimizer's memory
    as it is."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=max_steps if max_steps > 0 else 1000,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        logger.setLevel(level)
