"""The LightningModule that trains a :class:`ResNet` to classify images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_accel.config import require_positive
from lightning_accel.errors import ConfigError
from lightning_accel.models.reference import ReferenceModule
from lightning_accel.models.resnet import ResNet

_ONE_CLASS = "a classifier needs 2 classes or more"


@runtime_checkable
class ImageShapes(Protocol):
    """Image data the model must fit: channels per image and classes."""

    channels: int
    num_classes: int


class ImageClassifier(ReferenceModule):
    """Image classification with a :class:`ResNet` and cross-entropy; logs ``train/loss``,
    ``val/loss`` and ``val/accuracy``.

    Expects (images [B, C, H, W] float, labels [B]) batches, as the image DataModules
    return them after their device-side normalization.

    Args:
        in_channels, num_classes: must match the data (checked when fitting starts); 2
            classes or more.
        widths, blocks_per_stage: the network's shape (:class:`ResNet`).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup_steps: linear warm-up steps before cosine decay to 10% over the run's steps.
    """

    # what fitting logs: the runner checks a callback's ``monitor`` against it before launch
    logged_metrics: ClassVar[tuple[str, ...]] = ("train/loss", "val/loss", "val/accuracy")

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 2,
        learning_rate: float = 1e-2,
        weight_decay: float = 0.05,
        warmup_steps: int = 20,
    ) -> None:
        super().__init__()
        for key in ("in_channels", "num_classes", "blocks_per_stage", "learning_rate"):
            require_positive(f"model.{key}", locals()[key])
        if num_classes < 2:
            raise ConfigError("model.num_classes", num_classes, f"is too few: {_ONE_CLASS}")
        self.save_hyperparameters()
        self.model = ResNet(in_channels, num_classes, widths, blocks_per_stage)
        self.val_loss = MeanMetric()
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")

    @override
    def check_data(self, data: object) -> None:
        """Fail with a ConfigError naming the key to change where image data (channels per
        image, classes) does not fit the model; other data is not judged. The runner calls
        it before launch, and fitting calls it again from ``setup``."""
        if not isinstance(data, ImageShapes):
            return
        source = getattr(data, "source", None)  # named in the message when there is one
        where = f"data.source={source!r}" if source is not None else "the data"
        if data.num_classes == 1:
            raise ConfigError("data.source", source, f"holds images of 1 class; {_ONE_CLASS}")
        for key, expected, one, several in (
            ("in_channels", data.channels, "channel", "channels"),
            ("num_classes", data.num_classes, "class", "classes"),
        ):
            if expected and expected != self.hparams[key]:
                counted = one if expected == 1 else several
                raise ConfigError(
                    f"model.{key}",
                    self.hparams[key],
                    f"does not match {where}, which has {expected} {counted}; "
                    f"set model.{key}={expected}",
                )

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # under a "-true" precision the weights are bf16/fp16 while the batches arrive in fp32
        return self.model(images.to(self.model.head.weight.dtype))

    @override
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images).float(), labels)
        # Synced, so that under data parallelism the logged loss is the global batch's. Not
        # prog_bar: Lightning would read it after every batch, waiting for the device;
        # RunProgressBar shows it at logging steps.
        self.log("train/loss", loss, sync_dist=True)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images).float()
        self.val_loss.update(F.cross_entropy(logits, labels), weight=labels.numel())
        self.val_accuracy.update(logits, labels)

    @override
    def evaluation_results(self) -> dict[str, tuple[torch.Tensor, bool]]:
        return {
            "loss": (self.val_loss.compute(), True),
            "accuracy": (self.val_accuracy.compute(), True),
        }

    @override
    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """Each image's class probabilities and its most likely class."""
        images, _ = batch
        probabilities = self(images).float().softmax(-1)
        return {"label": probabilities.argmax(-1), "probabilities": probabilities}
