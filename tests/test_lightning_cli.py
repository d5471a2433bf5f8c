"""The pack from a LightningCLI project: its strategy by registered name, its model,
DataModule and callbacks by class path, FSDP2 on 2 CPU processes started by Lightning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_accel.models import GPTLanguageModel

pytestmark = pytest.mark.slow

APP = """
from lightning.pytorch.cli import LightningCLI

import lightning_accel  # noqa: F401 - registers the pack's strategies by name

LightningCLI(save_config_kwargs={"overwrite": True})
"""

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 2
  strategy: fsdp2
  precision: bf16-mixed
  max_steps: 6
  limit_val_batches: 0
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_accel.callbacks.SpeedMonitor
      init_args: {warmup_steps: 2}
    - class_path: lightning_accel.callbacks.RunSummary
      init_args: {output_dir: OUT, print_table: false}
model:
  class_path: lightning_accel.models.GPTLanguageModel
  init_args: {n_layer: 2, d_model: 32, n_head: 2, seq_len: 32}
data:
  class_path: lightning_accel.data.TokenDataModule
  init_args: {source: CORPUS, seq_len: 32, batch_size: 4, num_workers: 0}
"""


def test_a_lightning_cli_project_trains_with_the_packs_fsdp2_on_two_processes(
    tmp_path: Path, small_corpus: Path
) -> None:
    (tmp_path / "app.py").write_text(APP)
    config = CONFIG.replace("OUT", str(tmp_path / "out")).replace("CORPUS", str(small_corpus))
    (tmp_path / "config.yaml").write_text(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "app.py", "fit", "--config", "config.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("fsdp2", 2, 6)
    assert summary["precision"] == "bf16-mixed"
    model = GPTLanguageModel(n_layer=2, d_model=32, n_head=2, seq_len=32)
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    assert summary["model_state_bytes"]["parameters"] == whole // 2, "rank 0 holds half"
    assert summary["samples_per_second"] > 0, "the pack's speed monitor measured the run"
