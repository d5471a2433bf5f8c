"""Experiment trackers as logger presets: MLflow read back with its own client, W&B's
offline run files, several loggers at once, and the offline decision."""

from __future__ import annotations

import json
from csv import DictReader
from pathlib import Path

import pytest
import yaml
from helpers import TINY, run_cli
from mlflow import MlflowClient

from lightning_accel.callbacks.fault_injection import KillRank
from lightning_accel.cli.preflight import preflight
from lightning_accel.cli.trackers import (
    TRACKER_RUNS,
    continued_tracker_runs,
    record_tracker_runs,
    wandb_offline,
)
from lightning_accel.errors import ConfigError


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` as ``{"a/b": 1}``, as Lightning hands parameters to MLflow
    (which has no value for an empty mapping or list: those are left out)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif value != []:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.fixture
def local_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline (no key, no ~/.netrc) and MLflow in the run directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def test_csv_mlflow_and_wandb_at_once_record_the_config_and_the_metrics(
    tmp_path: Path, small_corpus: Path, local_trackers: None
) -> None:
    args = ["train", *TINY, f"data.source={small_corpus}", "logger=[csv,mlflow,wandb]"]
    result = run_cli([*args, "hydra.run.dir=run"], cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    config = _flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    with (run_dir / "metrics.csv").open() as rows:
        csv_losses = [
            (int(r["step"]), float(r["val/loss"])) for r in DictReader(rows) if r["val/loss"]
        ]

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "gpt"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    params = mlflow_run.data.params
    assert {key: params.get(key) for key in config} == {k: str(v) for k, v in config.items()}
    history = client.get_metric_history(mlflow_run.info.run_id, "val/loss")
    mlflow_losses = sorted((m.step, m.value) for m in history)
    assert len(mlflow_losses) == 2  # trainer=smoke validates twice in its 4 steps
    assert [step for step, _ in mlflow_losses] == [step for step, _ in csv_losses]
    assert [loss for _, loss in mlflow_losses] == pytest.approx([loss for _, loss in csv_losses])

    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline_run.glob("run-*.wandb")
    data = records.read_bytes()
    # its records (protobuf): the metrics' names and the resolved config's keys and values
    fragments = (b"val/loss", b"train/loss", b"hardware", b"n_layer", str(small_corpus).encode())
    for fragment in fragments:
        assert fragment in data, fragment
    assert "wandb sync" in result.stderr
    assert "wandb:" not in result.stderr, "W&B's own warnings"


def test_a_restarted_attempt_logs_on_into_the_tracker_runs_of_the_first(
    tmp_path: Path, small_corpus: Path, local_trackers: None
) -> None:
    args = ["train", *TINY, f"data.source={small_corpus}", "logger=[mlflow,wandb]"]
    args += ["launcher.run_id=first", "hydra.run.dir=run", "+callbacks.kill.point=training_step"]
    args += [
        f"+callbacks.kill.{key}"
        for key in ("_target_=" + KillRank.__module__ + ".KillRank", "step=3", "rank=0")
    ]
    # killed after the checkpoint of step 2's validation; torchrun's restart runs the same
    # command again, where the kill is spent
    killed = run_cli(args, cwd=tmp_path, timeout=240)
    assert killed.returncode != 0
    restarted = run_cli(args, cwd=tmp_path, timeout=240, env={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming from" in restarted.stderr
    run_dir = tmp_path / "run"

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "gpt"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED", "the first attempt's run was left RUNNING"
    history = client.get_metric_history(mlflow_run.info.run_id, "val/loss")
    assert sorted(m.step for m in history) == [1, 3], "both attempts' validations, in one run"

    attempts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2
    assert len({attempt.name.rsplit("-", 1)[1] for attempt in attempts}) == 1, "one W&B run id"


def test_tracker_runs_are_continued_by_an_attempt_of_the_same_config_only(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    parameters = {"launcher": {"run_id": "first"}, "trainer": {"max_steps": 4}}
    nodes = {"logger.wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger"}}
    logger = WandbLogger(id="w1", offline=True, save_dir=str(tmp_path))
    record_tracker_runs(tmp_path, {"logger.wandb": logger}, parameters)
    assert continued_tracker_runs(tmp_path, nodes, parameters)["logger.wandb"]["id"] == "w1"
    raised = {**parameters, "trainer": {"max_steps": 8}}
    assert continued_tracker_runs(tmp_path, nodes, raised) == nodes, "a changed config: new runs"
    # an MLflow run its store no longer holds (mlflow.db deleted): a new run, not a traceback
    record = json.loads((tmp_path / TRACKER_RUNS).read_text())
    record["runs"]["logger.mlflow"] = {"run_id": "0123456789abcdef"}
    (tmp_path / TRACKER_RUNS).write_text(json.dumps(record))
    store = {"_target_": "lightning.pytorch.loggers.MLFlowLogger"}
    store["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_nodes = {**nodes, "logger.mlflow": store}
    continued = continued_tracker_runs(tmp_path, mlflow_nodes, parameters)
    assert continued["logger.mlflow"] == store and continued["logger.wandb"]["id"] == "w1"
    for malformed in ("[1, 2]", "{not json", '{"config": 1, "runs": []}'):
        (tmp_path / TRACKER_RUNS).write_text(malformed)
        assert continued_tracker_runs(tmp_path, nodes, parameters) == nodes


def test_mlflow_follows_mlflow_tracking_uri_and_wandb_goes_offline_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (run,) = preflight(["logger=[mlflow,wandb]"], multirun=False)
    assert run.logger["mlflow"]["tracking_uri"] == "http://mlflow.example:5000"
    assert run.logger["wandb"]["offline"] is True
    assert list(tmp_path.iterdir()) == [], "checking a config must not write anything"


@pytest.mark.parametrize(
    ("environment", "netrc", "offline"),
    [
        ({}, None, True),
        ({"WANDB_API_KEY": "k" * 40}, None, False),
        ({}, "machine api.wandb.ai login user password " + "k" * 40, False),
        ({}, "machine other.host login user password secret", True),
        ({"WANDB_BASE_URL": "https://wandb.corp.example"}, "machine wandb.corp.example", False),
        ({"WANDB_MODE": "disabled"}, None, False),  # W&B follows its own mode
    ],
)
def test_wandb_runs_offline_unless_a_key_or_a_mode_is_configured(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    netrc: str | None,
    offline: bool,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if netrc is not None:
        (tmp_path / ".netrc").write_text(netrc + "\n")
        (tmp_path / ".netrc").chmod(0o600)
    assert wandb_offline() is offline


def test_mlflow_without_its_package_is_refused_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name)
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"logger\.mlflow\._target_=.*'lightning-accel\[tracking\]'"
    ):
        preflight(["logger=[csv,mlflow]"], multirun=False)
    assert list(tmp_path.iterdir()) == []
