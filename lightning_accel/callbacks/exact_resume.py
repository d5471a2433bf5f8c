"""Makes a fit resumed from a checkpoint continue as the uninterrupted run would have."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_accel.checkpoints import saved_at_epoch_end, saved_between_epochs
from lightning_accel.loggers import RunCSVLogger
from lightning_accel.xla import runtime


class ExactResume(pl.Callback):
    """What Lightning leaves out of a resumed fit, so that it continues as one trained there
    without a stop would have. No options; the runner adds one to every run.

    - A checkpoint saved at an epoch's end (Lightning saves there when validation runs once
      an epoch, or not at all) has the epoch counted processed but not completed. Under
      ``max_steps`` Lightning resumed it by running the epoch's end again, counting it
      twice: every later epoch's sampler got the next epoch's number (another data order),
      and its logs a step one too many. It is restated as saved at the end of the epoch's
      last batch, which Lightning resumes with the next epoch.
    - The random number generators (torch's, the rank's CUDA device's where it is in use,
      NumPy's and Python's, and an XLA device's seed) are saved in every checkpoint and
      restored where the resumed run stands where the uninterrupted one stood at the save.
      The XLA seed is restored at ``on_train_start``, before the first batch's fetch,
      whose step marker advances it as it did after the save.
      For a checkpoint from an epoch's end, that is as the checkpoint is restored, before
      the next epoch's loader iterator draws its workers' seed and order from them. Inside
      an epoch, it is the resumed fit's first batch, after the resumed epoch's iterator,
      which had started before the save. A run seeded again at its start drew the dropout
      masks of its first steps a second time, and a plain shuffled loader resumed from an
      epoch's end took another order. Exact where the loaders draw nothing else from the
      global generator as they start: inside an epoch the training loader, and at an
      epoch's end the validation loader, whose iterator Lightning starts again as it
      resumes (the pack's loaders draw from generators of their own; give yours
      ``generator=``). The state is rank 0's, which every rank shares when the ranks are
      seeded alike (the runner does).
    - Each :class:`RunCSVLogger`'s ``metrics.csv`` is brought back to the step the fit
      starts at (:meth:`RunCSVLogger.continue_from`): an attempt killed after its
      checkpoint logged steps the resumed run logs again, and a fresh start in an earlier
      run's directory begins an empty history.
    """

    def __init__(self) -> None:
        self._saved_random_state: dict[str, Any] | None = None
        self._saved_at_an_epoch_end = False
        self._xla_device: torch.device | None = None
        self._saved_xla_seed: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        self._xla_device = device if device.type == "xla" else None

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"random_state": _random_state()}
        if self._xla_device is not None:
            state["xla_seed"] = runtime.random_seed(self._xla_device)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # called after on_load_checkpoint, as Lightning restores the callbacks
        self._saved_random_state = state_dict.get("random_state")
        self._saved_xla_seed = state_dict.get("xla_seed")
        if self._saved_at_an_epoch_end:
            # the next epoch's loader iterator, which may draw its workers' seed and order
            # from the global generator, starts before any hook of the fit (in Lightning's
            # setup of the data), as it started after the save in the uninterrupted run
            self._restore_random_state()

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # called before Lightning restores its loops from the same dict
        if trainer.state.fn == TrainerFn.FITTING:
            loop = checkpoint.get("loops", {}).get("fit_loop") or {}
            self._saved_at_an_epoch_end = saved_between_epochs(loop)
            # private Lightning API (pinned by tests/test_upstream_pins.py): its own rule
            # for a run that max_steps ends, under which it resumes from a restart stage
            by_steps = trainer.fit_loop._iteration_based_training()
            _resume_epoch_end_as_its_last_batch(checkpoint, by_steps)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the loops are restored by now, and nothing has been logged since the fit began
        self._restore_xla_seed()
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.continue_from(trainer.global_step)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # inside an epoch: its iterator was started before the save and again on resuming
        self._restore_random_state()

    def _restore_random_state(self) -> None:
        saved, self._saved_random_state = self._saved_random_state, None
        if saved is None:
            return
        try:
            _set_random_state(saved)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
            # a checkpoint is data from anywhere; this one's state is not ours
            rank_zero_warn(
                "the checkpoint's random state is not one ExactResume saves; the resumed"
                " run draws from its seed instead"
            )

    def _restore_xla_seed(self) -> None:
        # before the first batch's fetch: the XLA loader's step marker there advances the
        # device generator, as it did after the save in the uninterrupted run
        seed, self._saved_xla_seed = self._saved_xla_seed, None
        if seed is None or self._xla_device is None:
            return
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            rank_zero_warn(
                "the checkpoint's XLA random state is not one ExactResume saves; the resumed"
                " run's XLA device draws from its seed instead"
            )
            return
        runtime.set_random_seed(self._xla_device, seed)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._saved_random_state = None
        self._saved_at_an_epoch_end = False
        self._saved_xla_seed = None


def _resume_epoch_end_as_its_last_batch(checkpoint: dict[str, Any], by_steps: bool) -> None:
    """Restate a checkpoint saved in ``on_train_epoch_end`` (the epoch counted processed,
    not completed) as saved at the end of the epoch's last batch, with the epoch counted
    completed where its batches ran out, and not yet processed where ``max_steps`` cut it
    short. Lightning resumes that state with the next epoch (its hooks called, its counts
    kept in step) or with the cut epoch's next batch, logging at the same steps as the
    uninterrupted run. A run without ``max_steps`` whose epoch ran out is left as it is:
    Lightning resumes that one with the next epoch itself. Private Lightning API: the
    loops' progress counters in the checkpoint (pinned by the resume parity tests)."""
    loop = checkpoint.get("loops", {}).get("fit_loop") or {}
    if not saved_at_epoch_end(loop):
        return
    epochs, batches = loop["epoch_progress"], loop["epoch_loop.batch_progress"]
    ran_out = batches["is_last_batch"]
    if ran_out and not by_steps:
        return
    for counts in (epochs["current"], epochs["total"]):
        if ran_out:
            counts["completed"] = counts["processed"]
        else:
            counts["processed"] = counts["completed"]
    for counts in (batches["current"], batches["total"]):
        counts["completed"] -= 1
    # counted after a batch's hooks: one less at the end of its last batch
    loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
    # Lightning takes a validation that has not ended for one a stop cut short
    if "epoch_loop.val_loop.batch_progress" in loop:
        loop["epoch_loop.val_loop.batch_progress"]["is_last_batch"] = True


def _random_state() -> dict[str, Any]:
    """This process's generator states, as tensors and plain values (checkpoints are loaded
    with ``weights_only=True``, which refuses NumPy arrays)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }
    if torch.cuda.is_initialized():
        # this rank's device only: another rank restores it onto its own device
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    """Restore :func:`_random_state`'s states; every part is read before any is set."""
    version, internal, gauss = state["python"]
    python = (version, tuple(internal), gauss)
    kind, keys, position, has_gauss, cached = state["numpy"]
    numpy_state = (kind, keys.numpy().astype(np.uint32), position, has_gauss, cached)
    torch.set_rng_state(state["torch"])
    random.setstate(python)
    np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda"])
