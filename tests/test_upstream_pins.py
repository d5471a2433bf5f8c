"""The private upstream code the package relies on, pinned: a Lightning or Hydra upgrade that
changes any of it fails here, by name, instead of changing a run's behaviour unnoticed."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_accel.callbacks.progress import RunProgressBar


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def _code_digest(function: object) -> str:
    """A digest of ``function``'s code that ignores comments and layout."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def test_fsdp2_setup_follows_the_model_parallel_setup_it_restates() -> None:
    # FSDP2Strategy.setup restates this method (which refuses a LightningModule without
    # configure_model); when it changes, carry the change over and update the digest
    assert _code_digest(ModelParallelStrategy.setup) == "5d7b9d1fe4f45db3"


def test_the_progress_bar_label_comes_from_get_train_description() -> None:
    assert _parameters(RichProgressBar._get_train_description) == ["self", "current_epoch"]
    assert "self._get_train_description(" in inspect.getsource(RichProgressBar)


def test_the_progress_bar_reads_metrics_at_logging_steps_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = []
    monkeypatch.setattr(
        RichProgressBar, "get_metrics", lambda self, trainer, module: reads.append(1) or {}
    )
    bar = RunProgressBar()
    for step in range(6):
        bar.get_metrics(SimpleNamespace(training=True, global_step=step, log_every_n_steps=5), None)
    assert len(reads) == 2, "at steps 0 and 5"
    bar.get_metrics(SimpleNamespace(training=False, global_step=6, log_every_n_steps=5), None)
    assert len(reads) == 3, "validation always reads"
