"""The reference models' shared base: what each evaluation epoch logs matches the names the
runner checks monitors against, the metrics start each epoch afresh, and each model's
AdamW set-up."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.models import GPTLanguageModel, ImageClassifier
from lightning_accel.models.reference import ReferenceModule


def _model_and_batches(kind: str) -> tuple[ReferenceModule, list[DataLoader]]:
    torch.manual_seed(0)
    if kind == "gpt":
        model = GPTLanguageModel(vocab_size=32, seq_len=8, n_layer=1, d_model=16, n_head=2)
        tokens = torch.randint(0, 32, (2, 8, 9))
        splits = [TensorDataset(t[:, :-1], t[:, 1:]) for t in tokens]
    else:
        model = ImageClassifier(in_channels=1, num_classes=3, widths=(4,), blocks_per_stage=1)
        splits = [
            TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)
        ]
    return model, [DataLoader(split, batch_size=4) for split in splits]


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )


@pytest.mark.parametrize("kind", ["gpt", "image"])
def test_each_evaluation_logs_the_declared_names_and_starts_afresh(kind: str) -> None:
    model, (first, second) = _model_and_batches(kind)
    trainer = _trainer()
    validated = trainer.validate(model, first, verbose=False)[0]
    declared = {name for name in model.logged_metrics if not name.startswith("train/")}
    assert set(validated) == declared
    tested = trainer.test(model, second, verbose=False)[0]
    assert set(tested) == {name.replace("val/", "test/") for name in declared}
    # were the metrics not reset, the test loss would average in the validation batches
    alone = _trainer().test(_model_and_batches(kind)[0], second, verbose=False)[0]
    assert tested["test/loss"] == pytest.approx(alone["test/loss"], rel=1e-6)
    assert tested["test/loss"] != pytest.approx(validated["val/loss"], rel=1e-3)


@pytest.mark.parametrize(("kind", "betas"), [("gpt", (0.9, 0.95)), ("image", (0.9, 0.999))])
def test_each_model_trains_with_its_own_adamw_betas(kind: str, betas: tuple[float, float]) -> None:
    model, (first, _) = _model_and_batches(kind)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, first)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == betas
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == model.hparams.weight_decay
    assert undecayed["weight_decay"] == 0.0
