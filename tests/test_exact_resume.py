"""ExactResume in a user's own Trainer: a fit interrupted after an epoch-end checkpoint and
resumed from it ends with the weights of the fit that ran without a stop."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers import InterruptAt, TinyRegression, quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_accel.callbacks import ExactResume

STEPS_PER_EPOCH = 4


class EpochSchedule(TinyRegression):
    """The regression with a learning rate halved every epoch (a scheduler that steps at
    epoch ends, as image training often has)."""

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def _fit(
    checkpoints: Path,
    exact: bool,
    shuffle: bool,
    stop_at: int | None = None,
    ckpt_path: Path | None = None,
) -> dict[str, torch.Tensor]:
    """12 steps of 4-batch epochs with an epoch-end checkpoint (no validation: Lightning
    saves in on_train_epoch_end), optionally interrupted or resumed, from a plain loader
    shuffled or not; the final weights."""
    pl.seed_everything(0, verbose=False)
    x = torch.randn(16 * STEPS_PER_EPOCH, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    callbacks: list[pl.Callback] = [ModelCheckpoint(checkpoints, "last", every_n_epochs=1)]
    callbacks += [ExactResume()] if exact else []
    callbacks += [InterruptAt(stop_at)] if stop_at is not None else []
    trainer = quiet_trainer(
        max_steps=3 * STEPS_PER_EPOCH,
        limit_val_batches=0,
        callbacks=callbacks,
        enable_checkpointing=True,
    )
    model = EpochSchedule()
    try:
        loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=shuffle)
        trainer.fit(model, loader, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's exit after an interrupted fit
        assert stop_at is not None
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize(("exact", "shuffle"), [(True, False), (False, False), (True, True)])
def test_a_drop_in_fit_resumed_from_an_epoch_end_checkpoint_equals_one_without_a_stop(
    tmp_path: Path, exact: bool, shuffle: bool
) -> None:
    # a shuffled plain loader draws each epoch's order from the global generator as the
    # epoch starts: the resumed run's state must be restored by then
    straight = _fit(tmp_path / "straight", exact, shuffle)
    _fit(tmp_path / "stopped", exact, shuffle, stop_at=STEPS_PER_EPOCH + 2)  # second epoch
    saved = tmp_path / "stopped" / "last.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == STEPS_PER_EPOCH
    resumed = _fit(tmp_path / "stopped", exact, shuffle, ckpt_path=saved)
    same = all(torch.equal(resumed[name], straight[name]) for name in straight)
    # without the callback, Lightning 2.6 ran the saved epoch's end again (max_steps)
    assert same == exact


def test_a_checkpoint_whose_random_state_is_not_ours_resumes_from_the_seed_with_a_warning(
    tmp_path: Path,
) -> None:
    _fit(tmp_path, exact=True, shuffle=False, stop_at=STEPS_PER_EPOCH + 2)
    saved = tmp_path / "last.ckpt"
    checkpoint = torch.load(saved, weights_only=True)
    checkpoint["callbacks"]["ExactResume"]["random_state"] = {"torch": "not a state"}
    torch.save(checkpoint, saved)
    with pytest.warns(UserWarning, match="random state is not one ExactResume saves"):
        resumed = _fit(tmp_path, exact=True, shuffle=False, ckpt_path=saved)
    assert all(value.isfinite().all() for value in resumed.values())


@pytest.mark.parametrize("seed", [-1, 2**64, "101", 1.5, True, 2**64 - 1])
def test_an_xla_seed_that_is_not_ours_is_left_out_with_a_warning(
    seed: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checked before torch_xla is imported: the main environment has none
    applied: list[int] = []
    monkeypatch.setattr(
        "lightning_accel.xla.runtime.set_random_seed", lambda device, seed: applied.append(seed)
    )
    callback = ExactResume()
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("xla")), loggers=[])
    callback.setup(trainer, TinyRegression(), "fit")  # type: ignore[arg-type]
    callback.load_state_dict({"random_state": None, "xla_seed": seed})
    ours = seed == 2**64 - 1  # the largest seed the device's generator holds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_train_start(trainer, TinyRegression())  # type: ignore[arg-type]
    refused = [
        w for w in caught if "XLA random state is not one ExactResume saves" in str(w.message)
    ]
    assert (applied, len(refused)) == (([seed], 0) if ours else ([], 1))
