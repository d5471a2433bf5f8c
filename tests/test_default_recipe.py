"""The default recipe learns: its validation loss falls within a short run on real text."""

from __future__ import annotations

import json
import math
from pathlib import Path

from helpers import run_cli


def test_default_recipe_validation_loss_falls(tmp_path: Path) -> None:
    short = [
        "trainer.max_steps=60",
        "trainer.val_check_interval=20",
        "trainer.limit_val_batches=4",
        "callbacks=minimal",
        "logger=none",
        "hydra.run.dir=run",
    ]
    result = run_cli(["train", *short], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recipe"] == "gpt" and summary["steps"] == 60
    validations = summary["validation"]
    assert [v["step"] for v in validations] == [20, 40, 60]
    losses = [v["val/loss"] for v in validations]
    assert losses[0] < math.log(256), "better than a uniform guess over bytes after 20 steps"
    assert losses[0] > losses[1] > losses[2], f"validation loss must fall: {losses}"
    assert losses[0] - losses[2] > 0.2
    for v in validations:
        assert math.isclose(v["val/bits_per_byte"], v["val/loss"] / math.log(2), rel_tol=1e-5)
        assert math.isclose(v["val/perplexity"], math.exp(v["val/loss"]), rel_tol=1e-3)
