"""XLA on the CPU through PJRT (the TPU code paths, run for real): one device against eager
CPU, SPMD over 4 virtual devices against one device, parameter shards, compilations after
warm-up, checkpoints, and the multi-process TPU path at one device.

These run in the torch-xla environment (scripts/setup_xla.sh; scripts/test.sh runs them);
the main environment has no torch_xla and skips them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TEST_IMPORTS, run_cli

from lightning_accel.checkpoints import consolidate_checkpoint, saved_step, sharded_metadata
from lightning_accel.safe_load import load_data_file

pytest.importorskip("torch_xla", reason="torch_xla is installed only in the XLA environment")
# importing torch_xla set its C++ log level here, for every process this one starts; the
# CLI's processes start from a user's environment, which has none
os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)

pytestmark = pytest.mark.slow

MODEL = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=32"]
LOOP = [
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks=minimal",
    "callbacks.checkpoint.save_top_k=-1",  # every validation's checkpoint kept: step-10, step-20
    "data.batch_size=8",
]
# the two XLA runs most tests compare against fail at any compilation after warm-up: the
# first 3 steps and the first of their two validations (the second must compile nothing)
GUARDED = (
    "callbacks.recompile_guard.action=fail",
    "+callbacks.recompile_guard.warmup_validations=1",
)
XLA_CPU = ("hardware=xla_cpu", *GUARDED)
XLA_CPU_SPMD = ("hardware=xla_cpu_spmd", *GUARDED)
# the TPU profile's multi-process path, at one process on the CPU
TPU_ONE_PROCESS = ("hardware=tpu", "hardware.pjrt_device=CPU", "hardware.devices=1")


class XLARuns:
    """Runs the CLI once per configuration (cached for the module) and reads its outputs."""

    def __init__(self, root: Path, corpus: Path) -> None:
        self.root = root
        self.base = ["train", *MODEL, *LOOP, f"data.source={corpus}"]
        self.stderr: dict[str, str] = {}
        self.stdout: dict[str, str] = {}

    def train(self, name: str, *overrides: str) -> Path:
        run_dir = self.root / name
        if not (run_dir / "summary.json").exists():
            args = [*self.base, f"hydra.run.dir={run_dir}", *overrides]
            result = run_cli(args, cwd=self.root, timeout=400, env=TEST_IMPORTS)
            assert result.returncode == 0, result.stderr[-3000:]
            self.stderr[name], self.stdout[name] = result.stderr, result.stdout
        return run_dir

    @staticmethod
    def losses(run_dir: Path) -> list[float]:
        with (run_dir / "metrics.csv").open() as handle:
            rows = [r for r in csv.DictReader(handle) if r["train/loss"]]
        return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]

    @staticmethod
    def summary(run_dir: Path) -> dict:
        return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> XLARuns:
    return XLARuns(tmp_path_factory.mktemp("xla"), small_corpus)


def _max_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == 20, "a loss for every step"
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_xla_cpu_follows_eager_cpu(runs: XLARuns) -> None:
    eager = runs.losses(runs.train("cpu", "hardware=cpu"))
    xla = runs.losses(runs.train("xla_cpu", *XLA_CPU))
    assert eager[-1] < eager[0] - 0.5, "the model learns"
    assert _max_gap(xla, eager) < 1e-4


def test_spmd_on_four_devices_follows_one_device(runs: XLARuns) -> None:
    one = runs.losses(runs.train("xla_cpu", *XLA_CPU))
    spmd_dir = runs.train("xla_cpu_spmd", *XLA_CPU_SPMD)
    assert _max_gap(runs.losses(spmd_dir), one) < 1e-4


def test_compilations_stop_after_warm_up(runs: XLARuns) -> None:
    """20 steps and 2 validations under a guard that fails the run at a compilation after
    the first 3 steps and the first validation."""
    for name, hardware in (("xla_cpu", XLA_CPU), ("xla_cpu_spmd", XLA_CPU_SPMD)):
        summary = runs.summary(runs.train(name, *hardware))
        assert summary["steps"] == 20, "a compilation after warm-up would have failed the run"
        assert summary["xla_compilations"] > 0 and summary["xla_compile_seconds"] > 0


def _resumed_from_step_10(runs: XLARuns, run_dir: Path, *overrides: str) -> tuple[Path, Path]:
    """The checkpoint a 20-step run saved at its validation after step 10 (mid-epoch: what a
    run stopped there would have left), and a run resumed from it to 20 steps."""
    checkpoint = run_dir / "checkpoints" / "step-10.ckpt"
    resumed = runs.train(f"{run_dir.name}_resumed", *overrides, f"ckpt_path={checkpoint}")
    return checkpoint, resumed


def _assert_same_weights(expected: dict, got: dict) -> None:
    assert got["global_step"] == expected["global_step"] == 20
    for key, value in expected["state_dict"].items():
        assert got["state_dict"][key].device.type == "cpu", "checkpoints hold CPU tensors"
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=1e-5)


def test_mid_epoch_resume_ends_with_the_weights_of_an_uninterrupted_run(runs: XLARuns) -> None:
    uninterrupted = runs.train("xla_cpu", *XLA_CPU)
    checkpoint, resumed = _resumed_from_step_10(runs, uninterrupted, "hardware=xla_cpu")
    saved = load_data_file(checkpoint)
    # the device loader reads batches ahead; the checkpoint counts those the trainer took
    loader_state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 0, "batches_taken": 10}]
    expected = load_data_file(uninterrupted / "checkpoints" / "last.ckpt")
    got = load_data_file(resumed / "checkpoints" / "last.ckpt")
    _assert_same_weights(expected, got)
    whole, tail = runs.losses(uninterrupted), runs.losses(resumed)
    assert len(tail) == 10, "a loss for each resumed step"
    assert max(abs(x - y) for x, y in zip(tail, whole[10:], strict=True)) < 1e-4


def test_a_resume_continues_the_xla_device_generator(runs: XLARuns) -> None:
    """Dropout draws from the XLA device's own generator, which the checkpoint keeps: a run
    seeded again drew its first resumed steps' masks from the start of the sequence."""
    dropout = ("hardware=xla_cpu", "model.dropout=0.1")
    uninterrupted = runs.train("xla_cpu_dropout", *dropout)
    checkpoint, resumed = _resumed_from_step_10(runs, uninterrupted, *dropout)
    assert isinstance(load_data_file(checkpoint)["callbacks"]["ExactResume"]["xla_seed"], int)
    expected = load_data_file(uninterrupted / "checkpoints" / "last.ckpt")
    got = load_data_file(resumed / "checkpoints" / "last.ckpt")
    _assert_same_weights(expected, got)


def test_sharded_spmd_checkpoint_holds_pieces_and_resumes_to_the_same_weights(
    runs: XLARuns,
) -> None:
    uninterrupted = runs.train("xla_cpu_spmd", *XLA_CPU_SPMD)  # sharded checkpoints by default
    checkpoint, resumed = _resumed_from_step_10(runs, uninterrupted, "hardware=xla_cpu_spmd")
    assert checkpoint.is_dir() and (checkpoint / "meta.pt").is_file()
    # written aside and renamed into place, as FSDP2's: saved over (step 10, then the
    # last), nothing staged is left beside them
    assert not [p.name for p in checkpoint.parent.iterdir() if p.name.startswith(".")]
    metadata = sharded_metadata(checkpoint)
    weight = metadata["state_dict.model.blocks.0.mlp.0.weight"]
    moment = metadata["optimizer_0.state.model.blocks.0.mlp.0.weight.exp_avg"]
    for entry in (weight, moment):
        rows = entry.size[0]
        assert [list(c.offsets) for c in entry.chunks] == [[i * rows // 4, 0] for i in range(4)]
        assert all(list(c.sizes) == [rows // 4, entry.size[1]] for c in entry.chunks)
    whole = consolidate_checkpoint(
        uninterrupted / "checkpoints" / "last.ckpt", runs.root / "u.ckpt"
    )
    final = consolidate_checkpoint(resumed / "checkpoints" / "last.ckpt", runs.root / "spmd.ckpt")
    expected = load_data_file(whole)
    _assert_same_weights(expected, load_data_file(final))
    assert runs.summary(resumed)["strategy"] == "xla_spmd"


def test_a_two_by_two_mesh_checkpoints_every_piece_once_and_resumes_to_the_same_weights(
    runs: XLARuns,
) -> None:
    """Parameters split over fsdp and copied over data: two devices hold each piece, and
    torch_xla's planner dropped every write of such a tensor (no weights, no moments)."""
    mesh = ("hardware=xla_cpu_spmd", "hardware.strategy_options.data=2")
    uninterrupted = runs.train("xla_cpu_spmd_2x2", *mesh)
    checkpoint, resumed = _resumed_from_step_10(runs, uninterrupted, *mesh)
    metadata = sharded_metadata(checkpoint)
    saved = load_data_file(checkpoint / "meta.pt")
    assert "state_dict" not in saved, "the weights are in the shards"
    weight = metadata["state_dict.model.blocks.0.mlp.0.weight"]
    rows = weight.size[0]
    assert [list(c.offsets) for c in weight.chunks] == [[0, 0], [rows // 2, 0]], "each piece once"
    assert "optimizer_0.state.model.blocks.0.mlp.0.weight.exp_avg" in metadata
    whole = consolidate_checkpoint(
        uninterrupted / "checkpoints" / "last.ckpt", runs.root / "u2x2.ckpt"
    )
    final = consolidate_checkpoint(resumed / "checkpoints" / "last.ckpt", runs.root / "r2x2.ckpt")
    _assert_same_weights(load_data_file(whole), load_data_file(final))


def test_an_spmd_run_and_its_resume_print_our_messages_only(runs: XLARuns) -> None:
    # torch_xla's C++ layer warned at each compiled graph that GSPMD is to be replaced (83
    # lines in 3 steps), and its Python code and torch's checkpoint code warned at each save
    # and load; none names an action for the user
    uninterrupted = runs.train("xla_cpu_spmd", *XLA_CPU_SPMD)
    _resumed_from_step_10(runs, uninterrupted, "hardware=xla_cpu_spmd")
    runs.train("tpu_one_process", *TPU_ONE_PROCESS)
    for name in ("xla_cpu_spmd", "xla_cpu_spmd_resumed", "tpu_one_process"):
        lines = [line for line in runs.stderr[name].splitlines() if line.strip()]
        assert lines, "the CLI says what it does"
        assert all(line.startswith("lightning-accel: ") for line in lines), lines
        # the multi-process path logged "Joining rendezvous ..." at every barrier
        assert runs.stdout[name].strip() == "", runs.stdout[name][-2000:]
    # one process drives the 4 devices of the mesh; Lightning counts 1
    said = runs.stderr["xla_cpu_spmd"]
    assert "lightning-accel: training recipe=gpt on PJRT x4 in SPMD (32-true)" in said, said


def test_an_spmd_save_killed_midway_keeps_the_previous_checkpoint_to_resume_from(
    runs: XLARuns,
) -> None:
    # last.ckpt only (save_top_k=0), so the save at step 20 writes over the one of step 10;
    # the process is killed while it writes, after the shards and before the loop state
    only_last = ("callbacks.checkpoint.save_top_k=0",)
    run_dir = runs.root / "spmd_killed"
    killed = run_cli(
        [
            *runs.base,
            f"hydra.run.dir={run_dir}",
            *XLA_CPU_SPMD,
            *only_last,
            "+callbacks.kill._target_=lightning_accel.callbacks.fault_injection.KillRank",
            "+callbacks.kill.point=checkpoint_write",
            "+callbacks.kill.step=11",
        ],
        cwd=runs.root,
        timeout=400,
        env=TEST_IMPORTS,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert saved_step(last) == 10, "the step-10 checkpoint is whole, not mixed with step 20's"
    resumed = runs.train("spmd_killed", *XLA_CPU_SPMD, *only_last)  # resumes from it by itself
    uninterrupted = runs.train("xla_cpu_spmd", *XLA_CPU_SPMD)
    expected = consolidate_checkpoint(
        uninterrupted / "checkpoints" / "last.ckpt", runs.root / "uninterrupted.ckpt"
    )
    got = consolidate_checkpoint(resumed / "checkpoints" / "last.ckpt", runs.root / "k.ckpt")
    _assert_same_weights(load_data_file(expected), load_data_file(got))


# three SPMD runs of 20 steps in one test: 105-229 s beside the main tests on two cores
@pytest.mark.timeout(600)
def test_spmd_checkpoint_saves_cost_a_handful_of_compilations(runs: XLARuns) -> None:
    sharded = runs.summary(runs.train("xla_cpu_spmd", *XLA_CPU_SPMD))
    unsaved = runs.summary(
        runs.train("xla_cpu_spmd_unsaved", "hardware=xla_cpu_spmd", "callbacks.checkpoint=null")
    )
    gathered = runs.summary(
        runs.train(
            "xla_cpu_spmd_gathered",
            "hardware=xla_cpu_spmd",
            "hardware.strategy_options.checkpoint=gathered",
        )
    )
    assert sharded["checkpoint_saves"] == gathered["checkpoint_saves"] >= 2
    assert unsaved["checkpoint_saves"] == 0
    assert sharded["xla_compilations"] - unsaved["xla_compilations"] <= 5
    assert sharded["checkpoint_compilations"] <= 5
    # gathering compiles a graph for (nearly) every parameter and optimizer tensor
    assert gathered["checkpoint_compilations"] > 10 * max(1, sharded["checkpoint_compilations"])


def test_tpu_profile_at_one_device_runs_the_multi_process_path_like_xla_cpu(
    runs: XLARuns,
) -> None:
    # Lightning's XLAStrategy and launcher, the one process started through torch_xla's spawn
    one = runs.losses(runs.train("xla_cpu", *XLA_CPU))
    spawned = runs.train("tpu_one_process", *TPU_ONE_PROCESS)
    assert runs.summary(spawned)["strategy"] == "xla_processes"
    assert _max_gap(runs.losses(spawned), one) < 1e-4


def test_each_device_holds_a_quarter_of_each_sharded_parameter(tmp_path: Path) -> None:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}
    code = (
        "from lightning_accel.models import GPTLanguageModel\n"
        "from lightning_accel.xla import runtime\n"
        "from lightning_accel.xla.spmd import XLASPMDStrategy\n"
        "import json\n"
        "strategy = XLASPMDStrategy(data=1, fsdp=-1)\n"
        "model = GPTLanguageModel(n_layer=1, d_model=32, n_head=2, seq_len=16)\n"
        "model = model.to(runtime.device())\n"
        "strategy.shard_parameters(model)\n"
        "print(json.dumps({n: [list(p.shape), runtime.local_shard_shapes(p)]\n"
        "                  for n, p in model.named_parameters()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    sharded = 0
    for name, (full, shards) in shapes.items():
        assert len(shards) == 4, name
        if full and full[0] % 4 == 0:
            assert all(s == [full[0] // 4, *full[1:]] for s in shards), (name, full, shards)
            sharded += 1
        else:
            assert all(s == full for s in shards), (name, full, shards)
    assert sharded >= len(shapes) - 2, "every parameter whose first dimension 4 divides"


def test_activation_checkpointing_under_spmd_keeps_the_losses(runs: XLARuns) -> None:
    plain = runs.losses(runs.train("xla_cpu_spmd", *XLA_CPU_SPMD))
    checkpointed = runs.train(
        "xla_cpu_spmd_checkpointed",
        "hardware=xla_cpu_spmd",
        "optimization.activation_checkpointing.enabled=true",
    )
    assert _max_gap(runs.losses(checkpointed), plain) < 1e-4


def test_bf16_mixed_on_xla_behaves_like_bf16_mixed_on_the_cpu(runs: XLARuns) -> None:
    eager = runs.losses(runs.train("cpu_bf16", "hardware=cpu", "optimization.precision=bf16-mixed"))
    xla = runs.train("xla_cpu_bf16", "hardware=xla_cpu", "optimization.precision=bf16-mixed")
    assert runs.summary(xla)["precision"] == "bf16-mixed"
    assert _max_gap(runs.losses(xla), eager) < 2e-2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_size=6"], "data.batch_size=6 is not divisible by the 4 devices"),
        (
            ["hardware.strategy_options.data=3", "hardware.strategy_options.fsdp=1"],
            "must multiply to the 4 devices here",
        ),
    ],
    ids=["batch the mesh does not divide", "mesh of another size"],
)
def test_spmd_bad_input_exits_2_before_compiling(
    tmp_path: Path, small_corpus: Path, overrides: list[str], message: str
) -> None:
    args = ["train", *MODEL, "trainer=smoke", f"data.source={small_corpus}"]
    result = run_cli([*args, "hardware=xla_cpu_spmd", *overrides, "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_the_speed_monitor_counts_the_same_flops_on_xla_as_on_the_cpu(runs: XLARuns) -> None:
    eager = runs.summary(runs.train("cpu", "hardware=cpu"))
    xla = runs.summary(runs.train("xla_cpu", *XLA_CPU))
    assert xla["flops_per_step"] == eager["flops_per_step"] > 0
    assert 0 < xla["mfu"] < 1 and xla["peak_flops_source"].startswith("measured float32")
    # one process drives 4 devices: each device computes a quarter of the step, and its MFU
    # is that quarter over the step time and one device's peak (not the mesh's 4)
    spmd = runs.summary(runs.train("xla_cpu_spmd", *XLA_CPU_SPMD))
    assert spmd["flops_per_step"] * 4 == eager["flops_per_step"]
    achieved = spmd["flops_per_step"] / spmd["step_seconds"]
    peak = spmd["peak_tflops_per_device"] * 1e12
    assert spmd["mfu"] == pytest.approx(achieved / peak, rel=0.01)


def test_the_runtime_waits_for_queued_work_and_reports_no_allocator_peak_on_the_cpu() -> None:
    from lightning_accel.devices import synchronized_time
    from lightning_accel.xla import runtime

    device = runtime.device()
    product = torch.ones(256, 256, device=device) @ torch.ones(256, 256, device=device)
    runtime.sync()
    assert synchronized_time(device) > 0
    assert float(product[0, 0].cpu()) == 256.0
    assert runtime.peak_memory_bytes(device) is None  # PJRT's CPU client keeps no statistics


def test_device_loader_workers_start_from_a_fork_server_and_deliver_the_same_batches() -> None:
    """Workers forked from the device loader's thread could inherit a held lock and hang;
    they come from a fork server instead, which imports torch and the dataset's module for
    them, and batches are unchanged."""
    from multiprocessing import forkserver

    from lightning_accel.xla import runtime
    from lightning_accel.xla.device_loader import DeviceLoader

    data = torch.utils.data.TensorDataset(torch.arange(24, dtype=torch.float32).view(12, 2))
    host = list(torch.utils.data.DataLoader(data, batch_size=4))
    workers = torch.utils.data.DataLoader(data, batch_size=4, num_workers=1)
    loader = DeviceLoader(workers, runtime.device())
    assert workers.multiprocessing_context.get_start_method() == "forkserver"
    assert forkserver._forkserver._preload_modules == ["torch", "torch.utils.data.dataset"]
    device_batches = [batch[0].cpu() for batch in loader]
    assert [b[0].tolist() for b in host] == [b.tolist() for b in device_batches]


class _FailsAtItem(torch.utils.data.Dataset):
    """Twelve items; reading item ``failing`` raises (a corrupt record, a dead worker)."""

    def __init__(self, failing: int) -> None:
        self.failing = failing

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.failing:
            raise ValueError(f"item {index} cannot be read")
        return torch.full((2,), float(index))


def test_a_failed_read_ahead_is_raised_in_the_training_thread_not_an_early_epoch_end() -> None:
    """torch_xla's reading thread ends the device queue on any error; the batches read before
    the failure still arrive, then the error itself, every pass (a run would otherwise
    start empty epoch after empty epoch)."""
    from lightning_accel.xla import runtime
    from lightning_accel.xla.device_loader import DeviceLoader

    host = torch.utils.data.DataLoader(_FailsAtItem(failing=6), batch_size=4)
    loader = DeviceLoader(host, runtime.device())
    for _ in range(2):
        delivered = []
        with pytest.raises(ValueError, match="item 6 cannot be read"):
            delivered.extend(batch.cpu() for batch in loader)
        assert [b[:, 0].tolist() for b in delivered] == [[0.0, 1.0, 2.0, 3.0]]
        assert loader.batches_taken == 1
    readable = torch.utils.data.DataLoader(_FailsAtItem(failing=99), batch_size=4)
    assert len(list(DeviceLoader(readable, runtime.device()))) == 3
