"""launcher=ray on a Ray head that each command starts on this machine (address=local): a
--multirun of DDP and FSDP2 ends with the weights of launcher=local, one Ray job per sweep
job; a rank killed, then a Ray worker killed, restart every rank, which resume to the
weights of an uninterrupted run; bad input exits 2 with one sentence and leaves nothing
running."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import LOOP, TEST_IMPORTS, Runs, free_port, run_cli

from lightning_accel.checkpoints import run_weights
from lightning_accel.cli import ray_launch
from lightning_accel.cli.main import main
from lightning_accel.cli.ray_launch import Slot, rank_variables, require_shared
from lightning_accel.cli.schema import LauncherConfig
from lightning_accel.errors import SIGINT_EXIT_CODE, STOPPED_EXIT_CODE, ConfigError, RunStopped
from lightning_accel.machine import usable_cores

pytestmark = pytest.mark.slow

RAY = ["launcher=ray", "launcher.address=local"]
# what a Ray cluster runs: its head's services and its workers (named ray::<what they run>)
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "default_worker.py", "log_monitor.py")


def _processes() -> dict[int, tuple[int, str]]:
    """Every process of this machine: its parent's id and its command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (parent, command)
    return found


def ray_processes(under: int | None = None) -> set[int]:
    """The ids of the Ray processes running on this machine (``under``: only those
    descending from that process)."""
    processes = _processes()

    def descends(pid: int) -> bool:
        while pid in processes and pid != under:
            pid = processes[pid][0]
        return pid == under

    return {
        pid
        for pid, (_, command) in processes.items()
        if any(name in command for name in RAY_PROCESSES) and (under is None or descends(pid))
    }


def assert_none_left(before: set[int], within: float = 20.0) -> None:
    """Every Ray process started since ``before`` ends within ``within`` seconds."""
    deadline = time.monotonic() + within
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left running: {sorted(left)}"


def _assert_same(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _outputs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


@pytest.mark.timeout(900)
def test_ddp_and_fsdp2_sweep_on_ray_end_like_the_local_launcher(runs: Runs) -> None:
    references = {
        "ddp_cpu": runs.train("ddp", "ddp_cpu", 2),
        "fsdp2_cpu": runs.train("fsdp2", "fsdp2_cpu", 2),
    }
    before = ray_processes()
    sweep = runs.root / "ray_sweep"
    args = ["train", "--multirun", *runs.base[1:], *LOOP, "hardware=ddp_cpu,fsdp2_cpu"]
    args += ["hardware.devices=2", "data.batch_size=4", *RAY, f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, cwd=runs.root, timeout=600, env=TEST_IMPORTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_none_left(before)
    assert result.stderr.count("starting 2 ranks as Ray workers at 'local'") == 2, "one per job"
    assert "\x1b[" not in result.stdout + result.stderr, "no colour codes in captured output"
    for job, hardware in enumerate(references):
        run_dir, reference = sweep / str(job), references[hardware]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["world_size"], summary["steps"], summary["restarts"]) == (2, 20, 0)
        assert _outputs(run_dir) == _outputs(reference)
        assert (run_dir / "ranks" / "attempt_0" / "1" / "stderr.log").is_file()
        _assert_same(run_weights(run_dir), run_weights(reference), atol=1e-6)


@pytest.mark.timeout(600)
def test_killed_rank_then_killed_worker_restart_every_rank_which_resume_to_the_same_weights(
    runs: Runs,
) -> None:
    reference = runs.train("ddp", "ddp_cpu", 2)
    before = ray_processes()
    restarted = runs.train(
        "ray_killed",
        "ddp_cpu",
        2,
        *RAY,
        "launcher.max_failures=2",
        # attempt 0: rank 1's process is killed at step 6 (the last checkpoint: step 5)
        "+callbacks.kill._target_=lightning_accel.callbacks.fault_injection.KillRank",
        "+callbacks.kill.point=training_step",
        "+callbacks.kill.step=6",
        # attempt 1: the Ray worker hosting rank 1 is killed at step 12 (checkpoint: step 10)
        "+callbacks.host._target_=helpers.KillParentInAttempt",
        "+callbacks.host.step=12",
        "+callbacks.host.attempt=1",
    )
    assert_none_left(before)
    attempts = sorted(p.name for p in (restarted / "ranks").iterdir())
    assert attempts == ["attempt_0", "attempt_1", "attempt_2"]
    summary = json.loads((restarted / "summary.json").read_text())
    assert (summary["steps"], summary["restarts"]) == (20, 2)
    _assert_same(run_weights(restarted), run_weights(reference), atol=1e-6)


BAD_INPUT = {
    "unreachable address": (
        [f"launcher.address=ray://127.0.0.1:{free_port()}", "launcher.timeout_s=5"],
        ["launcher.address='ray://127.0.0.1:", "did not answer within launcher.timeout_s=5"],
    ),
    "address of another form": (
        ["launcher.address=head:6379"],
        ["launcher.address='head:6379'", "auto, local, ray://HOST:PORT"],
    ),
    "more CPUs than the cluster has": (
        [f"launcher.cpus_per_worker={usable_cores()}"],
        [f"needs {2 * usable_cores()} CPUs on one node", f"has {usable_cores()};"],
    ),
    "GPUs the cluster has not": (
        ["launcher.gpus_per_worker=1"],
        ["launcher.gpus_per_worker=1.0 x 2 workers needs 2 GPUs", "has 0"],
    ),
    "workers that are not one per rank": (
        ["launcher.num_workers=3"],
        ["launcher.num_workers=3", "1 x 2 = 2 ranks"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_ray_input_exits_2_with_one_sentence_and_starts_nothing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    overrides, expected = BAD_INPUT[case]
    _assert_refused(["hardware=ddp_cpu", *RAY, *overrides], expected, tmp_path, monkeypatch, capsys)


def test_missing_ray_is_named_with_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the package
    expected = ["launcher='ray' needs the ray package", "pip install 'lightning-accel[ray]'"]
    _assert_refused(["hardware=ddp_cpu", *RAY], expected, tmp_path, monkeypatch, capsys)


def _assert_refused(
    overrides: list[str],
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", *overrides])
    assert time.monotonic() - started < 60
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lightning-accel: error: ") and line.endswith(".")
    for fragment in expected:
        assert fragment in line
    assert list(tmp_path.iterdir()) == [], "refused before anything was written"
    assert ray_processes(under=os.getpid()) == set(), "no Ray process started"


def test_a_node_that_does_not_see_the_run_directory_is_refused(tmp_path: Path) -> None:
    launcher = LauncherConfig(name="ray", storage_path="/scratch")
    slots = [Slot("a", "10.0.0.1", [], True), Slot("b", "10.0.0.2", [], False)]
    with pytest.raises(ConfigError, match=r"not seen by 1 of the 2 nodes") as error:
        require_shared(launcher, tmp_path, slots)
    assert str(error.value).startswith("launcher.storage_path='/scratch' is not shared")
    require_shared(launcher, tmp_path, slots[:1])


def test_ranks_get_torch_elastic_variables_by_node_and_see_their_nodes_gpus() -> None:
    slots = [Slot("a", "10.0.0.1", ["3"], True), Slot("a", "10.0.0.1", ["1"], True)]
    slots += [Slot("b", "10.0.0.2", ["0"], True), Slot("b", "10.0.0.2", ["2"], True)]
    variables = rank_variables(slots, 29500, "run", attempt=1, max_failures=2)
    assert [v["LOCAL_RANK"] for v in variables] == ["0", "1", "0", "1"]
    assert [v["GROUP_RANK"] for v in variables] == ["0", "0", "1", "1"]
    assert [v["CUDA_VISIBLE_DEVICES"] for v in variables] == ["3,1", "3,1", "0,2", "0,2"]
    assert {(v["MASTER_ADDR"], v["MASTER_PORT"], v["WORLD_SIZE"]) for v in variables} == {
        ("10.0.0.1", "29500", "4")
    }
    assert {v["TORCHELASTIC_RESTART_COUNT"] for v in variables} == {"1"}


def test_ranks_that_all_stopped_on_sigterm_end_the_run_as_stopped_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranks that stop on SIGTERM together (tests/test_preemption.py) exit 143 and have saved
    their step: the run ends as stopped, with no restart, which would train on."""
    attempts = []

    def attempt(*args: object) -> dict[int, int | None]:
        attempts.append(args)
        return {0: STOPPED_EXIT_CODE, 1: STOPPED_EXIT_CODE}

    monkeypatch.setattr(ray_launch, "run_workers", lambda *_: SimpleNamespace(count=2))
    monkeypatch.setattr(ray_launch, "connected", lambda _: nullcontext())
    monkeypatch.setattr(ray_launch, "check_cluster", lambda *_: None)
    monkeypatch.setattr(ray_launch, "_attempt", attempt)
    launcher = LauncherConfig(name="ray", max_failures=3)
    with pytest.raises(RunStopped, match="the ranks stopped on SIGTERM") as stopped:
        ray_launch.launch_on_ray(tmp_path / "config.yaml", None, launcher)  # type: ignore[arg-type]
    assert stopped.value.exit_code == STOPPED_EXIT_CODE
    assert len(attempts) == 1


def test_ctrl_c_on_the_driver_ends_with_the_checkpoint_and_the_command_that_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C reaches the driver only (Ray's workers are not in its process group): the
    attempt's cleanup kills the ranks, and the command says where the run can go on."""
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3, "state_dict": {}}, last)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- launcher=ray\n- trainer.max_steps=9\n")

    def interrupted(*args: object) -> dict[int, int | None]:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_launch, "run_workers", lambda *_: SimpleNamespace(count=2))
    monkeypatch.setattr(ray_launch, "connected", lambda _: nullcontext())
    monkeypatch.setattr(ray_launch, "check_cluster", lambda *_: None)
    monkeypatch.setattr(ray_launch, "_attempt", interrupted)
    launcher = LauncherConfig(name="ray")
    with pytest.raises(RunStopped) as stopped:
        ray_launch.launch_on_ray(tmp_path / "config.yaml", None, launcher)  # type: ignore[arg-type]
    assert stopped.value.exit_code == SIGINT_EXIT_CODE
    assert str(stopped.value) == (
        f"stopped on SIGINT; the ranks were stopped; its last checkpoint is {last}; "
        f"`lightning-accel train launcher=ray trainer.max_steps=9 hydra.run.dir={tmp_path}` "
        "resumes from it"
    )


def test_rays_token_auth_notice_is_filtered_and_its_warning_that_auth_is_off_kept() -> None:
    import logging

    from ray._private.authentication import authentication_token_setup as token_setup

    from lightning_accel.cli.ray_cluster import RAY_TOKEN_LOGGER, quiet_token_auth_notice

    assert token_setup.logger.name == RAY_TOKEN_LOGGER
    quiet_token_auth_notice()
    quiet_token_auth_notice()
    shown: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage().split(".")[0])  # type: ignore[method-assign]
    token_setup.logger.addHandler(handler)
    try:
        token_setup._warn_token_auth_enabled()
        token_setup._warn_token_auth_disabled()
    finally:
        token_setup.logger.removeHandler(handler)
    assert shown == ["Token authentication is disabled for this Ray cluster"]
