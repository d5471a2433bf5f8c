"""The LightningModule that trains a :class:`GPT` on byte tokens."""

from __future__ import annotations

import math
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity
from typing_extensions import override

from lightning_accel.config import require_positive
from lightning_accel.errors import ConfigError
from lightning_accel.models.gpt import GPT, GPTConfig
from lightning_accel.models.reference import ReferenceModule


@runtime_checkable
class TokenShapes(Protocol):
    """Token data whose samples the model must fit: tokens per sample and the vocabulary."""

    seq_len: int
    vocab_size: int


class GPTLanguageModel(ReferenceModule):
    """Next-token prediction with a :class:`GPT`; logs loss, bits per byte and perplexity.

    Args:
        vocab_size, seq_len, n_layer, d_model, n_head, dropout: the model's shape
            (:class:`GPTConfig`).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay (not applied to norms, biases and embeddings).
        warmup_steps: linear warm-up steps before cosine decay to 10% over the run's steps.
    """

    adamw_betas: ClassVar[tuple[float, float]] = (0.9, 0.95)  # overrides the base's AdamW default
    # what fitting logs: the runner checks a callback's ``monitor`` against it before launch
    logged_metrics: ClassVar[tuple[str, ...]] = (
        "train/loss",
        "val/loss",
        "val/bits_per_byte",
        "val/perplexity",
    )

    def __init__(
        self,
        vocab_size: int = 256,
        seq_len: int = 128,
        n_layer: int = 4,
        d_model: int = 128,
        n_head: int = 4,
        dropout: float = 0.0,
        learning_rate: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        for key in ("vocab_size", "seq_len", "n_layer", "d_model", "n_head", "learning_rate"):
            require_positive(f"model.{key}", locals()[key])
        self.save_hyperparameters()
        self.model = GPT(GPTConfig(vocab_size, seq_len, n_layer, d_model, n_head, dropout))
        self.val_loss = MeanMetric()
        self.val_perplexity = Perplexity()

    @override
    def check_data(self, data: object) -> None:
        """Fail with a ConfigError naming the key to change where token data (tokens per
        sample, vocabulary) does not fit the model; other data is not judged. The runner
        calls it before launch, and fitting calls it again from ``setup``."""
        if not isinstance(data, TokenShapes):
            return
        if data.seq_len > self.hparams.seq_len:
            raise ConfigError(
                "model.seq_len",
                self.hparams.seq_len,
                f"is shorter than the samples (data.seq_len={data.seq_len}); make them equal",
            )
        if data.vocab_size > self.hparams.vocab_size:
            raise ConfigError(
                "model.vocab_size",
                self.hparams.vocab_size,
                f"is smaller than the tokenizer's vocabulary; set it to {data.vocab_size}",
            )

    @override
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    @override
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        inputs, targets = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        # Synced, so that under data parallelism the logged loss is the global batch's: one
        # scalar all-reduce per step (Lightning refuses a sync_dist that changes per step).
        # Not prog_bar: Lightning would read it after every batch, waiting for the device;
        # RunProgressBar shows it at logging steps.
        self.log("train/loss", loss, sync_dist=True)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs).float()
        self.val_loss.update(
            F.cross_entropy(logits.flatten(0, 1), targets.flatten()), weight=targets.numel()
        )
        self.val_perplexity.update(logits, targets)

    @override
    def evaluation_results(self) -> dict[str, tuple[torch.Tensor, bool]]:
        loss = self.val_loss.compute()
        return {
            "loss": (loss, True),
            "bits_per_byte": (loss / math.log(2), False),
            "perplexity": (self.val_perplexity.compute(), False),
        }

    @override
    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """The most likely next token at every position, and each sample's loss."""
        inputs, targets = batch
        logits = self(inputs).float()
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)
        return {"next_tokens": logits.argmax(-1), "loss": loss}
