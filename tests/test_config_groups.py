"""Every option of every config group composes and passes the schema's checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightning_accel import machine
from lightning_accel.cli.preflight import preflight
from lightning_accel.config import HardwareConfig, OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.profiles import config_dir, load_profile, profile_names
from lightning_accel.xla import runtime as xla_runtime

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir())
CHOICES = [(group, option) for group in GROUPS for option in profile_names(group)]
XLA_PROFILES = ("tpu", "tpu_spmd", "xla_cpu", "xla_cpu_spmd")
# The custom recipe needs the user's classes; the pack's own stand in for them here.
CUSTOM = [
    "model._target_=lightning_accel.models.GPTLanguageModel",
    "data._target_=lightning_accel.data.TokenDataModule",
]


def test_groups_are_the_documented_ones() -> None:
    assert GROUPS == [
        *(
            "callbacks",
            "hardware",
            "launcher",
            "logger",
            "optimization",
            "recipe",
            "search",
            "trainer",
        )
    ]
    assert set(profile_names("launcher")) == {"local", "torchrun", "slurm", "slurm_local", "ray"}
    assert set(profile_names("hardware")) == {
        *("auto", "cpu", "ddp", "ddp_cpu", "fsdp2", "fsdp2_cpu"),
        *("tp", "tp_cpu", "fsdp2_tp", "fsdp2_tp_cpu", "hsdp", "hsdp_cpu"),
        *("tpu", "tpu_spmd", "xla_cpu", "xla_cpu_spmd"),
    }
    assert "default" in profile_names("optimization")
    assert "gpt" in profile_names("recipe")


CALLBACK_SETS = ("default", "minimal")


@pytest.mark.parametrize(("group", "option"), CHOICES, ids=[f"{g}={o}" for g, o in CHOICES])
def test_option_composes_and_validates(
    group: str,
    option: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    # GPU profiles are checked against a machine with 2 CUDA devices (none is used).
    monkeypatch.setattr(machine, "cuda_device_count", lambda: 2)
    extra = CUSTOM if (group, option) == ("recipe", "custom") else []
    if (group, option) == ("launcher", "torchrun"):
        extra = ["launcher.run_id=exp1"]  # required: every node must be given the same
    if (group, option) == ("launcher", "slurm"):  # checked as on a login node (none runs)
        srun = tmp_path_factory.mktemp("bin") / "srun"
        srun.write_text("#!/bin/sh\nexit 1\n")
        srun.chmod(0o755)
        monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    if group == "hardware" and option in XLA_PROFILES and not xla_runtime.installed():
        with pytest.raises(ConfigError, match=r"lightning-accel\[xla\]"):
            preflight([f"{group}={option}"], multirun=False)
        return  # composed and refused with the extra to install; tests/xla runs them
    # a search runs only as a sweep: its checks compose a job per bound of its space
    runs = preflight([f"{group}={option}", *extra], multirun=group == "search")
    run = runs[0]
    assert len(runs) == 1 or group == "search"
    if group == "recipe":
        assert run.recipe == option
    elif group in ("hardware", "optimization"):
        assert getattr(run, group).name == option
    elif group == "logger":
        assert (run.logger is None) == (option == "none")
    elif group == "callbacks" and option in CALLBACK_SETS:
        assert run.callbacks["summary"]["_target_"] == "lightning_accel.callbacks.RunSummary"
    elif group == "callbacks":  # one callback, added to a set in a list: [default,ema]
        assert list(run.callbacks) == [option] and run.callbacks[option]["_target_"]
    elif group == "launcher":
        assert run.launcher.name == option
    runs_root = "multirun" if group == "search" else "runs"
    assert run.run_dir.startswith(str(Path(runs_root) / run.recipe))
    assert list(tmp_path.iterdir()) == [], "checking a config must not write anything"


@pytest.mark.parametrize("name", profile_names("hardware"))
def test_hardware_profiles_load_without_hydra(name: str) -> None:
    assert load_profile("hardware", name, HardwareConfig).name == name


@pytest.mark.parametrize("name", profile_names("optimization"))
def test_optimization_profiles_load_without_hydra(name: str) -> None:
    assert load_profile("optimization", name, OptimizationConfig).name == name


def test_every_yaml_starts_with_purpose_and_command() -> None:
    for path in sorted(config_dir().rglob("*.yaml")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        comments = [line for line in lines[:6] if line.startswith("#") and "@package" not in line]
        assert comments, f"{path} does not start with a comment saying what it is for"
        assert any("lightning-accel train" in line for line in comments), f"{path} has no command"


def test_multirun_expands_sweeps_into_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = preflight(["seed=1,2,3", "hardware=cpu"], multirun=True)
    assert [r.seed for r in runs] == [1, 2, 3]
    assert [Path(r.run_dir).name for r in runs] == ["0", "1", "2"]


def test_a_sweeps_job_directories_follow_its_subdir_and_may_not_coincide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks looked for each job's own last checkpoint in <sweep dir>/<number> whatever
    hydra.sweep.subdir said, and a subdir without the job in it put every job in one
    directory, where each resumed the one before and kept its results."""
    monkeypatch.chdir(tmp_path)
    named = "hydra.sweep.subdir=${hydra.job.override_dirname}"
    runs = preflight(["seed=1,2", "hardware=cpu", "hydra.sweep.dir=sweep", named], multirun=True)
    assert [r.run_dir for r in runs] == [f"sweep/hardware=cpu,seed={seed}" for seed in (1, 2)]
    with pytest.raises(ConfigError) as refused:
        preflight(["seed=1,2", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=same"], True)
    assert str(refused.value) == (
        "hydra.sweep.subdir='same' gives jobs 0 and 1 one directory (sweep/same), where the "
        "later would resume the earlier's run; give each job its own, such as "
        "${hydra.job.num}."
    )


@pytest.mark.parametrize(
    "path", ["runs/gpt/2026-12-05_10-00-00", "/tmp/a b", "bench,one", "it's", "[x]", "é"]
)
def test_a_path_override_reads_back_as_the_path(path: str) -> None:
    """A run directory given to a cell (bench, verify) or printed in a resume command: a
    comma in it made a sweep, a space or a bracket a parse error."""
    from lightning_accel.cli.compose import job_overrides, parse_overrides, path_override

    override = path_override("hydra.run.dir", path)
    assert job_overrides([override], multirun=False) == [[override]]
    assert parse_overrides([override])[0].value() == path
    assert (override == f"hydra.run.dir={path}") == (path.startswith("runs/")), "plain as is"
