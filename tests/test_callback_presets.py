"""Callback presets from config (conf/callbacks/*.yaml), each proven to act: early stopping
stops, the learning-rate monitor logs, EMA validates and keeps averaged weights."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import TEST_IMPORTS, Runs, run_cli

pytestmark = pytest.mark.slow


def test_early_stopping_and_the_learning_rate_monitor_act(runs: Runs) -> None:
    # no validation improves by 100: the second one stops the run (patience 1)
    run = (
        "single_early_stopping",
        "cpu",
        1,
        "callbacks=[minimal,early_stopping,lr_monitor]",
        "callbacks.checkpoint.save_top_k=-1",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
    )
    run_dir = runs.train(*run)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 10, "stopped at the second validation, not at max_steps=20"
    assert summary["stopped_early"].startswith("monitored metric val/loss did not improve")
    # the same command again: resumed, Lightning trained on to the next validation
    files = {
        path: path.read_bytes()
        for path in (run_dir / "summary.json", run_dir / "checkpoints" / "last.ckpt")
    }
    again = run_cli(runs.arguments(*run), cwd=runs.root, timeout=300, env=TEST_IMPORTS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already stopped early at step 10 (" in again.stderr
    assert "nothing to do: drop early_stopping from the callbacks" in again.stderr
    assert all(path.read_bytes() == content for path, content in files.items())
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rates = [float(r[k]) for r in rows for k in r if k.startswith("lr-") and r[k]]
    assert len(rates) >= 10 and len(set(rates)) > 1, "one learning rate a step, warming up"


def test_ema_validates_and_keeps_the_averaged_weights_and_trains_as_before(runs: Runs) -> None:
    plain = runs.train("single", "cpu", 1)
    averaged = runs.train(
        "single_ema", "cpu", 1, "callbacks=[minimal,ema]", "callbacks.checkpoint.save_top_k=-1"
    )
    assert runs.losses(averaged) == runs.losses(plain), "training itself is unchanged"
    validation = [
        json.loads((d / "summary.json").read_text())["validation"] for d in (plain, averaged)
    ]
    assert [v["step"] for v in validation[0]] == [v["step"] for v in validation[1]]
    for raw, ema in zip(*validation, strict=True):
        assert abs(raw["val/loss"] - ema["val/loss"]) > 1e-3, "validation saw other weights"
    final_raw, final_ema = runs.final_weights(plain), runs.final_weights(averaged)
    key = "model.token_embedding.weight"
    assert not torch.allclose(final_raw[key], final_ema[key], atol=1e-4)
