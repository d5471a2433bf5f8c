"""The CLI end to end, in subprocesses: a tiny run, its outputs, help, --cfg job, multirun."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from helpers import TINY, run_cli


def _only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.glob("*/*") if p.is_dir()]
    return run_dir


def test_train_writes_checkpoint_summary_metrics_and_config(
    tmp_path: Path, small_corpus: Path
) -> None:
    result = run_cli(["train", *TINY, f"data.source={small_corpus}", "hardware=cpu"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = _only_run_dir(tmp_path / "runs")
    assert run_dir.parent.name == "gpt"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4
    assert [v["step"] for v in summary["validation"]] == [2, 4]
    assert summary["tokens_per_second"] > 0
    assert summary["hardware"] == "cpu" and summary["optimization"] == "default"

    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert "model.blocks.0.attn.qkv.weight" in checkpoint["state_dict"]

    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert "val/loss" in metrics[0] and len(metrics) > 2

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run_dir"] == str(run_dir)
    assert config["model"]["seq_len"] == config["data"]["seq_len"] == 32, "interpolations resolved"
    assert "Run summary" in result.stderr and str(run_dir) in result.stderr
    assert "Tip" not in result.stderr + result.stdout, "upstream tips are filtered"


def test_resume_from_checkpoint_continues_the_step_count(
    tmp_path: Path, small_corpus: Path
) -> None:
    base = ["train", *TINY, f"data.source={small_corpus}", "callbacks=minimal"]
    first = run_cli([*base, "hydra.run.dir=first"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    second = run_cli(
        [*base, "hydra.run.dir=second", f"ckpt_path={ckpt}", "trainer.max_steps=6"], cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert summary["steps"] == 6
    assert [v["step"] for v in summary["validation"]] == [6], "steps 1-4 are not repeated"


def test_help_lists_every_group_and_option(tmp_path: Path) -> None:
    result = run_cli(["train", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    for line in ("hardware: auto, cpu", "optimization: default", "recipe: custom, gpt"):
        assert line in result.stdout
    for group in ("trainer:", "logger:", "callbacks:"):
        assert group in result.stdout


def test_cfg_job_prints_the_resolved_config_and_runs_nothing(tmp_path: Path) -> None:
    result = run_cli(["train", "--cfg", "job", "data.seq_len=64"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["seq_len"] == 64
    assert config["run_dir"].startswith("runs/gpt/")
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_and_usage(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "lightning_accel"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "train" in result.stdout


def test_multirun_leaves_one_directory_per_job(tmp_path: Path, small_corpus: Path) -> None:
    args = [
        "train",
        "--multirun",
        *TINY,
        f"data.source={small_corpus}",
        "callbacks=minimal",
        "seed=1,2",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "multirun" / "gpt").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    seeds = [yaml.safe_load((sweep / j / "config.yaml").read_text())["seed"] for j in jobs]
    assert seeds == [1, 2]
    losses = [json.loads((sweep / j / "summary.json").read_text())["last_train_loss"] for j in jobs]
    assert losses[0] != losses[1], "different seeds train differently"
