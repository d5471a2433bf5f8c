"""Launchers beyond one machine: two torchrun nodes on 127.0.0.1 (DDP and FSDP2), an elastic
restart after a worker dies, submitit's local executor running a sweep, atomic checkpoint
writes, and the bad input of multi-node runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import TEST_IMPORTS, fit_tiny, free_port, run_cli

from lightning_accel.checkpoints import (
    AtomicCheckpointIO,
    atomic_directory,
    last_checkpoint,
    run_weights,
)
from lightning_accel.cli.main import main

pytestmark = pytest.mark.slow

# One tiny GPT, a global batch of 8 over 2 ranks, 12 steps in epochs of 8 batches; a
# checkpoint at every validation (steps 4, 8, 12).
RUN = [
    "model.n_layer=1",
    "model.d_model=32",
    "model.n_head=2",
    "data.seq_len=32",
    "data.batch_size=4",
    "trainer.max_steps=12",
    "trainer.limit_train_batches=8",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "callbacks=minimal",
    "logger=none",
]
TIMEOUT = 240


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


class Runs:
    """Each configuration is trained once per module and read back by the tests."""

    def __init__(self, root: Path, corpus: Path) -> None:
        self.root = root
        self.base = ["train", *RUN, f"data.source={corpus}"]
        self.stderr: dict[str, str] = {}

    def local(self, name: str, *extra: str) -> Path:
        run_dir = self.root / name
        if not (run_dir / "summary.json").exists():
            args = [*self.base, "hardware=ddp_cpu", f"hydra.run.dir={run_dir}", *extra]
            result = run_cli(args, cwd=self.root, timeout=TIMEOUT, env=TEST_IMPORTS)
            assert result.returncode == 0, result.stderr[-3000:]
            self.stderr[name] = result.stderr
        return run_dir

    def two_nodes(self, hardware: str) -> Path:
        """Two launcher processes with --nnodes 2 on 127.0.0.1, one rank each."""
        run_id = f"two_nodes_{hardware}"
        run_dir = self.root / "runs" / "gpt" / run_id
        if (run_dir / "summary.json").exists():
            return run_dir
        args = [*self.base, f"hardware={hardware}", "hardware.devices=1", "launcher=torchrun"]
        args += ["launcher.nnodes=2", f"launcher.run_id={run_id}", "launcher.rdzv_timeout_s=60"]
        args += [f"launcher.rdzv_endpoint=127.0.0.1:{free_port()}"]
        # one thread per rank, as the 2-rank node gives each of its ranks on 2 cores: the
        # same arithmetic, so the same weights. The two nodes run at once, each a command
        # forked from the command server.
        env = {"OMP_NUM_THREADS": "1"}

        def node(rank: int) -> subprocess.CompletedProcess:
            return run_cli([*args, f"launcher.node_rank={rank}"], self.root, TIMEOUT, env)

        with ThreadPoolExecutor(2) as nodes:
            results = list(nodes.map(node, (0, 1)))
        for result in results:
            assert result.returncode == 0, result.stderr[-3000:]
        self.stderr[run_id] = results[0].stderr
        return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Runs:
    return Runs(tmp_path_factory.mktemp("launchers"), small_corpus)


@pytest.mark.parametrize(("hardware", "tolerance"), [("ddp_cpu", 0.0), ("fsdp2_cpu", 1e-5)])
def test_two_torchrun_nodes_end_like_one_node_with_two_ranks(
    runs: Runs, hardware: str, tolerance: float
) -> None:
    reference = runs.local("one_node")
    two_nodes = runs.two_nodes(hardware)
    assert "1 of 2, meeting at 127.0.0.1" in runs.stderr[f"two_nodes_{hardware}"]
    summary = (two_nodes / "summary.json").read_text()
    assert '"world_size": 2' in summary and '"steps": 12' in summary
    assert sorted(p.name for p in (two_nodes / "ranks").iterdir()) == ["node-0", "node-1"]
    _assert_same(run_weights(two_nodes), run_weights(reference), atol=tolerance)


def test_ranks_started_by_an_outside_torchrun_train_as_one_run(runs: Runs) -> None:
    reference = runs.local("one_node")
    run_dir = runs.root / "outside_torchrun"
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "lightning_accel"]
    command += [*runs.base, "hardware=ddp_cpu", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=runs.root, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("lightning-accel: training recipe=gpt on CPU x2") == 1, "rank 0 only"
    assert '"world_size": 2' in (run_dir / "summary.json").read_text()
    _assert_same(run_weights(run_dir), run_weights(reference), atol=0.0)


# The fault matrix's CI subset (benchmarks/fault_matrix.py runs 10 points per profile):
# (profile, point, step, rank, weight tolerance)
FAULTS = [
    ("ddp_cpu", "training_step", 6, 1, 0.0),
    ("ddp_cpu", "data_loading", 5, 1, 0.0),
    ("fsdp2_cpu", "checkpoint_write", 5, 0, 1e-6),  # the save at step 8: 4 is kept
]


@pytest.mark.parametrize(
    ("hardware", "point", "step", "rank", "atol"), FAULTS, ids=[f[1] for f in FAULTS]
)
def test_a_rank_killed_at_a_fault_point_restarts_the_group_which_resumes_to_the_samerun_weights(
    runs: Runs, hardware: str, point: str, step: int, rank: int, atol: float
) -> None:
    # the uninterrupted runs (Runs.local trains ddp_cpu unless told otherwise)
    reference = runs.local(
        *{"ddp_cpu": ["one_node"]}.get(hardware, [hardware, f"hardware={hardware}"])
    )
    name = f"killed_{point}"
    restarted = runs.local(
        name,
        f"hardware={hardware}",
        "data.num_workers=0",
        "launcher=torchrun",
        f"launcher.run_id={name}",
        f"launcher.rdzv_endpoint=127.0.0.1:{free_port()}",
        "launcher.max_restarts=1",
        "+callbacks.kill._target_=lightning_accel.callbacks.fault_injection.KillRank",
        f"+callbacks.kill.point={point}",
        f"+callbacks.kill.step={step}",
        f"+callbacks.kill.rank={rank}",
    )
    attempts = sorted(p.name for p in (restarted / "ranks").rglob("attempt_*"))
    assert attempts == ["attempt_0", "attempt_1"], "one rank died once; the group restarted once"
    assert "resuming from" in runs.stderr[name]
    summary = json.loads((restarted / "summary.json").read_text())
    assert (summary["steps"], summary["restarts"]) == (12, 1)
    # the summary covers both attempts: the first one's record came with the checkpoint
    assert [a["from_step"] for a in summary["attempts"]] == [0, summary["resumed_from_step"]]
    whole = json.loads((reference / "summary.json").read_text())
    assert [v["step"] for v in summary["validation"]] == [v["step"] for v in whole["validation"]]
    _assert_same(run_weights(restarted), run_weights(reference), atol=atol)


def test_slurm_local_sweep_runs_each_job_as_ranks(runs: Runs, small_corpus: Path) -> None:
    reference = run_weights(runs.local("one_node"))
    sweep_root = runs.root / "sweep"
    sweep_root.mkdir()
    args = ["train", "--multirun", *runs.base[1:], "launcher=slurm_local", "hardware=ddp_cpu"]
    args += ["seed=0,1"]
    result = run_cli([*args, "hydra.sweep.dir=jobs"], cwd=sweep_root, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [sweep_root / "jobs" / str(n) for n in (0, 1)]
    for job in jobs:
        summary = (job / "summary.json").read_text()
        assert '"world_size": 2' in summary and '"steps": 12' in summary
    _assert_same(run_weights(jobs[0]), reference, atol=0.0)  # seed 0: the reference run
    seed_1 = run_weights(jobs[1])
    assert not torch.equal(
        seed_1["model.token_embedding.weight"], reference["model.token_embedding.weight"]
    )
    task_logs = list((sweep_root / "jobs" / ".submitit").rglob("*_log.out"))
    assert len(task_logs) == 4, "two jobs of two tasks (ranks) each"


def test_process_killed_while_saving_leaves_the_last_checkpoint_and_resumes(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "killed"
    code = f"from helpers import fit_tiny; fit_tiny({str(run_dir)!r}, 6, kill_saving_step=4)"
    env = {**os.environ, **TEST_IMPORTS}
    killed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2, "the previous one"
    assert last_checkpoint(checkpoint.parent) == checkpoint
    resumed = fit_tiny(run_dir, 6, resume=True)
    assert not list(checkpoint.parent.glob(".*.tmp")), "the next save clears what the kill left"
    uninterrupted = fit_tiny(tmp_path / "uninterrupted", 6)
    _assert_same(resumed, uninterrupted, atol=0.0)


def test_trainer_writes_checkpoints_through_the_atomic_io(tmp_path: Path) -> None:
    from lightning_accel import build_trainer

    trainer = build_trainer("cpu", max_steps=1, logger=False, default_root_dir=str(tmp_path))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_sharded_checkpoint_killed_mid_write_keeps_the_previous_one(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    with atomic_directory(target, True, lambda: None) as staging:
        (staging / "shard").write_text("old")
    child = os.fork()
    if child == 0:  # the child starts writing the next checkpoint and dies half-way
        with atomic_directory(target, True, lambda: None) as staging:
            (staging / "shard").write_text("new")
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status)
    assert (target / "shard").read_text() == "old"
    # killed between its two renames: the old directory is aside, and is put back
    target.rename(tmp_path / ".last.ckpt.old")
    last_checkpoint(tmp_path)  # restores before it checks
    assert (target / "shard").read_text() == "old"


def test_rendezvous_endpoint_that_never_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    args = ["train", "trainer=smoke", "hardware=cpu", "launcher=torchrun", "launcher.nnodes=2"]
    args += ["launcher.node_rank=1", "launcher.run_id=lost", "launcher.rdzv_timeout_s=3"]
    args += [f"launcher.rdzv_endpoint=127.0.0.1:{free_port()}", *RUN[:4]]
    started = time.monotonic()
    result = run_cli(args, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lightning-accel: error: launcher.rdzv_endpoint='127.0.0.1:")
    assert "within launcher.rdzv_timeout_s=3" in last
    assert elapsed < 90


@pytest.mark.parametrize(
    ("environment", "source"),
    [
        ({"TORCHELASTIC_RUN_ID": "job", "WORLD_SIZE": "3", "RANK": "0"}, "WORLD_SIZE (torchrun)"),
        (
            {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "train"},
            "SLURM_NTASKS (SLURM)",
        ),
    ],
)
def test_world_size_of_the_environment_must_match_the_config(
    environment: dict[str, str],
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", "hardware=ddp_cpu"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    size = environment.get("WORLD_SIZE") or environment["SLURM_NTASKS"]
    assert "launcher.nnodes x hardware.devices='1 x 2 = 2'" in line
    assert f"the {size} ranks the environment's {source}" in line
    assert list(tmp_path.iterdir()) == []
