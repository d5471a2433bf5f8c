"""The CLI end to end, in subprocesses: a tiny run, its outputs, help, --cfg job, multirun."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import HARDWARE_PROFILES, TEST_IMPORTS, TINY, refusal, run_cli

from lightning_accel.cli.main import main
from lightning_accel.cli.run_lock import LOCK_FILE
from lightning_accel.models import GPTLanguageModel


def _only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.glob("*/*") if p.is_dir()]
    return run_dir


def test_train_writes_checkpoint_summary_metrics_and_config(
    tmp_path: Path, small_corpus: Path
) -> None:
    # a new process, as the console script starts: its output is clean from the first import
    args = ["train", *TINY, f"data.source={small_corpus}", "hardware=cpu"]
    result = run_cli(args, cwd=tmp_path, fresh=True)
    assert result.returncode == 0, result.stderr
    run_dir = _only_run_dir(tmp_path / "runs")
    assert run_dir.parent.name == "gpt"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4
    assert [v["step"] for v in summary["validation"]] == [2, 4]
    assert summary["tokens_per_second"] > 0
    assert summary["hardware"] == "cpu" and summary["optimization"] == "default"
    assert summary["loader"] == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}

    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert "model.blocks.0.attn.qkv.weight" in checkpoint["state_dict"]

    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert "val/loss" in metrics[0] and len(metrics) > 2
    own = {name for name in metrics[0].split(",") if name.split("/")[0] in ("train", "val")}
    assert own == set(GPTLanguageModel.logged_metrics), "what the model declares it logs"

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
    # the checkpoint carries the first run's record; steps 1-4 are not repeated
    assert [v["step"] for v in summary["validation"]] == [2, 4, 6]
    assert [attempt["from_step"] for attempt in summary["attempts"]] == [0, 4]

    # the same command again: the run already reached its end, so its files stay as they are
    files = [p for p in (tmp_path / "second").iterdir() if p.is_file() and p.name != LOCK_FILE]
    kept = {p: p.read_bytes() for p in files}
    again = run_cli(
        [*base, "hydra.run.dir=second", f"ckpt_path={ckpt}", "trainer.max_steps=4"], cwd=tmp_path
    )
    assert again.returncode == 2, "an explicit checkpoint at step 4 is not past max_steps=4"
    assert "trainer.max_steps=4 is reached by ckpt_path=" in again.stderr
    assert "(saved after step 4), so nothing would train" in again.stderr
    repeated = run_cli([*base, "hydra.run.dir=second", "trainer.max_steps=6"], cwd=tmp_path)
    assert repeated.returncode == 0, repeated.stderr
    assert "second already reached trainer.max_steps=6 (" in repeated.stderr
    assert "last.ckpt, saved after step 6); nothing to do" in repeated.stderr
    log = tmp_path / "second" / "train.log"
    assert {p: p.read_bytes() for p in kept if p != log} == {
        p: data for p, data in kept.items() if p != log
    }, "summary and config kept"
    # the job's log keeps what it held, and records what the repeated command said
    added = log.read_text().removeprefix(kept[log].decode())
    assert "already reached trainer.max_steps=6" in added.splitlines()[0]


@pytest.mark.parametrize(
    ("limit", "reached", "progress"),
    [
        (["trainer.max_time=00:00:00:02"], r"trainer.max_time \(2 s\)", r"\d+ s of training"),
        (
            ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.max_steps=-1"],
            "trainer.max_epochs=2",
            "2 epochs",
        ),
    ],
)
def test_a_run_that_reached_its_time_or_epoch_limit_repeated_says_there_is_nothing_to_do(
    limit: list[str], reached: str, progress: str, tmp_path: Path, small_corpus: Path
) -> None:
    # Lightning restores the time and the epochs a run counted: repeated, it stopped before
    # a step and said "done" as if it had trained
    args = ["train", *TINY, f"data.source={small_corpus}", "callbacks=minimal", "logger=none"]
    args += ["trainer.max_steps=100000", *limit, "hydra.run.dir=run"]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = (tmp_path / "run" / "summary.json").read_bytes()
    repeated = run_cli(args, cwd=tmp_path)
    assert repeated.returncode == 0, repeated.stderr[-2000:]
    key = limit[0].split("=")[0]
    assert re.search(
        rf"run already reached {reached} \(.*last\.ckpt, saved after {progress}\); nothing "
        rf"to do: raise {key} to train further",
        repeated.stderr,
    ), repeated.stderr
    explicit = run_cli(
        [*args, "hydra.run.dir=other", f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}"],
        cwd=tmp_path,
    )
    assert explicit.returncode == 2, "a fit from a checkpoint that trains nothing is refused"
    assert f"error: {key}=" in explicit.stderr and "so nothing would train" in explicit.stderr
    assert (tmp_path / "run" / "summary.json").read_bytes() == summary, "the summary is kept"


def test_help_lists_every_group_and_option(tmp_path: Path) -> None:
    result = run_cli(["train", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    for line in (
        f"hardware: {HARDWARE_PROFILES}",
        "optimization: auto, default, fast, fp8, memory",
        "recipe: custom, gpt, image",
    ):
        assert line in result.stdout
    for group in ("trainer:", "logger:", "callbacks:"):
        assert group in result.stdout


@pytest.mark.parametrize("verb", ["bench", "plan", "consolidate", "doctor", "verify"])
def test_every_verb_prints_its_usage_with_help(
    verb: str, capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main([verb, "--help"])
    except SystemExit as exit_info:  # argparse's way
        code = exit_info.code
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(("usage: lightning-accel", f"usage: lightning-accel {verb}"))
    assert list(tmp_path.iterdir()) == [], "help runs nothing"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "--repeats", "x"], "bench: argument --repeats: invalid int value: 'x'; "),
        (["plan", "--world"], "plan: argument --world: expected one argument; "),
        (["verify", "--deadline", "soon"], "verify: argument --deadline: invalid float value"),
        (["bench", "--bogus"], "bench option='--bogus' is unknown; valid choices: --out, "),
    ],
)
def test_a_verbs_malformed_option_is_one_sentence_with_exit_2(
    args: list[str],
    expected: str,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert expected in refusal(args, capsys)
    assert list(tmp_path.iterdir()) == [], "nothing runs"


def test_train_version_is_the_packs_and_hydras_shell_completion_points_to_ours(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import version

    import hydra

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--version"]) == 0
    expected = f"lightning-accel {version('lightning-accel')} (Hydra {hydra.__version__})"
    assert capsys.readouterr().out.strip() == expected
    refused = refusal(["train", "--shell-completion", "install=bash"], capsys)
    assert 'eval "$(lightning-accel --completion bash)"' in refused
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "instead"),
    [
        (["--config-name", "mine"], "add your project's config groups with --config-dir DIR"),
        (["--config-path", "/elsewhere"], "the pack's primary config is its own"),
        (["--experimental-rerun", "config.pickle"], "RUN_DIR/.hydra/overrides.yaml"),
    ],
)
def test_hydra_flags_that_would_run_another_config_are_refused(
    flag: list[str],
    instead: str,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    refused = refusal(["train", *flag], capsys)
    assert f"train {flag[0]} is not supported: " in refused and instead in refused
    assert list(tmp_path.iterdir()) == []


def test_a_verbs_options_and_overrides_may_come_in_any_order() -> None:
    from lightning_accel.cli import bench, plan

    options = bench.parse_arguments(["hardware=cpu", "--repeats", "2", "trainer.max_steps=9"])
    assert (options.repeats, options.overrides) == (2, ["hardware=cpu", "trainer.max_steps=9"])
    options = plan.parse_arguments(["recipe=image", "--world", "2,4", "logger=none", "--json"])
    assert (options.world, options.json) == ("2,4", True)
    assert options.overrides == ["recipe=image", "logger=none"]


@pytest.mark.parametrize(
    ("record", "sentence"),
    [
        (  # torch elastic's error file: a mapping holding the message
            {"message": "RuntimeError: Skipping the `training_step` is not supported. Rewrite"},
            "RuntimeError: Skipping the `training_step` is not supported",
        ),
        ("ValueError: bad value\nTraceback (most recent call last):", "ValueError: bad value"),
        ("", None),  # a rank killed by a signal writes no record
    ],
)
def test_a_failed_rank_is_reported_with_the_first_sentence_it_raised(
    record: str | dict[str, str], sentence: str | None, tmp_path: Path
) -> None:
    from lightning_accel.cli.launch import first_sentence, ranks_failed

    assert first_sentence(record) == sentence
    failed = str(ranks_failed("rank 1 (exit code 1)", tmp_path, tmp_path / "ranks", 2, sentence))
    cause = f" ({sentence})" if sentence else ""
    assert failed.startswith(f"rank 1 (exit code 1) failed{cause}; the other ranks were stopped")


def test_cfg_job_prints_the_resolved_config_and_runs_nothing(tmp_path: Path) -> None:
    result = run_cli(["train", "--cfg", "job", "data.seq_len=64"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["seq_len"] == 64
    assert config["run_dir"].startswith("runs/gpt/")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("cfg", "package", "printed"),
    [
        # Hydra failed on the interpolation behind run_dir, and called a null value not found
        ("job", "run_dir", "runs/gpt/"),
        ("all", "ckpt_path", "null"),
        ("job", "model", "# @package model\n_target_: lightning_accel.models.GPTLanguageModel\n"),
        ("hydra", "hydra.job.name", "train"),
    ],
)
def test_cfg_package_prints_one_key_of_the_config(
    tmp_path: Path, cfg: str, package: str, printed: str
) -> None:
    result = run_cli(["train", "--cfg", cfg, "--package", package], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(printed), result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["seed=1", "--cfg", "job", "trainer.max_steps=3", "--resolve", "--package", "trainer"],
        ["--info", "config", "seed=1", "-m", "seed=2,3", "--config-dir", "conf", "--run"],
        ["--help", "--hydra-help", "--shell-completion", "--config-path", "p", "x=1"],
        ["--config-name", "c", "--experimental-rerun", "r.pickle", "--info"],
    ],
)
def test_flags_between_overrides_reach_hydra_flags_first(args: list[str]) -> None:
    from lightning_accel.cli.hydra_private import command_line_parser
    from lightning_accel.cli.train import hydra_command_line, parse_command_line

    options = parse_command_line(args, "train")
    overrides = [a for a in args if "=" in a]
    assert options.overrides == overrides
    command = hydra_command_line(options)
    assert command[len(command) - len(overrides) :] == overrides
    assert command_line_parser().parse_args(command) == options, "what hydra.main will read"


def test_validate_takes_a_flag_between_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tmp_path / "model.ckpt"
    model = GPTLanguageModel(n_layer=1, d_model=32, n_head=2, seq_len=32)
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.0"}, checkpoint)
    monkeypatch.chdir(tmp_path)
    args = ["--cfg", "job", f"ckpt_path={checkpoint}", "seed=3"]
    main(["validate", *TINY, "logger=none", *args])
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["stage"], config["seed"], config["ckpt_path"]) == (
        "validate",
        3,
        str(checkpoint),
    )


def test_python_dash_m_and_usage(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_accel"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "train" in result.stdout


def test_multirun_leaves_one_directory_per_job(tmp_path: Path, small_corpus: Path) -> None:
    # --multirun between the overrides, as the pack's other verbs take their options
    args = [
        "train",
        *TINY,
        "--multirun",
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


def test_a_sweep_job_runs_as_in_a_process_of_its_own(tmp_path: Path, small_corpus: Path) -> None:
    # a profile naming a float32 matmul precision set it for the process; the next job,
    # whose profile names none, ran at it (on a GPU: TF32 matmuls in an fp32 run); and
    # trainer.benchmark=true left cuDNN autotuning on for a later job's null
    record = tmp_path / "state.txt"
    args = ["train", *TINY, "--multirun", f"data.source={small_corpus}", "callbacks=minimal"]
    args += [
        "+callbacks.record._target_=helpers.RecordProcessState",
        f"+callbacks.record.path={record}",
    ]
    args += ["optimization.float32_matmul_precision=medium,null", "trainer.benchmark=true,null"]
    result = run_cli(args, cwd=tmp_path, env=TEST_IMPORTS)
    assert result.returncode == 0, result.stderr
    states = record.read_text().split()  # jobs by precision, then benchmark
    assert states == ["medium,True", "medium,False", "highest,True", "highest,False"]


def test_a_sweep_job_says_the_allocator_setting_an_earlier_job_left_cannot_be_undone(
    tmp_path: Path, small_corpus: Path
) -> None:
    args = ["train", *TINY, "--multirun", f"data.source={small_corpus}", "callbacks=minimal"]
    args += ["hardware=cpu", "optimization.keep_freed_host_memory=true,false,true"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    note = "keep_freed_host_memory=false cannot apply to a job that trains in this process"
    jobs = result.stderr.split("lightning-accel: done;")[:-1]  # what each job said
    assert [note in job for job in jobs] == [False, True, False]


USER_CODE = """
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    def __init__(self, hidden: int, lr: float = 0.05):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Data(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(160, 4, generator=g)
        self.set = TensorDataset(x, x.sum(1, keepdim=True))
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.set, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.set, batch_size=self.batch_size)
"""


def test_custom_recipe_trains_the_users_own_classes(tmp_path: Path) -> None:
    (tmp_path / "my_pkg.py").write_text(USER_CODE)
    args = [
        "train",
        "recipe=custom",
        "model._target_=my_pkg.Regressor",
        "+model.hidden=8",
        "data._target_=my_pkg.Data",
        "+data.batch_size=32",
        "trainer.max_steps=40",
        "callbacks=minimal",
        "hydra.run.dir=out",
    ]
    result = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["recipe"] == "custom" and summary["steps"] == 40
    losses = [v["val/loss"] for v in summary["validation"]]
    assert len(losses) == 8, "validated once per epoch of 5 batches"
    assert losses[-1] < 0.5 * losses[0]
    assert summary["tokens_per_second"] is None and summary["samples_per_second"] > 0

    typo = run_cli(
        [*args[:3], "+model.hiden=8", *args[4:]], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert typo.returncode == 2
    assert (
        "model.hiden=8 is not an argument of my_pkg.Regressor; valid choices: hidden, lr."
        in typo.stderr
    )


def _run_python(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``code`` run by a new interpreter, as the console script's process would be."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_config_mistakes_are_reported_before_torch_is_imported(tmp_path: Path) -> None:
    probe = (
        "import sys, lightning_accel_entry\n"
        "sys.argv = ['lightning-accel', 'train', 'trainer.max_steps=0']\n"
        "try:\n"
        "    lightning_accel_entry.main()\n"
        "except SystemExit as error:\n"
        "    print(error.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    result = _run_python(probe, tmp_path)
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert "trainer.max_steps=0 must be a positive number" in result.stderr


def test_ctrl_c_before_a_run_starts_ends_with_130_and_no_traceback(tmp_path: Path) -> None:
    probe = (
        "import sys, lightning_accel_entry\n"
        "import lightning_accel.cli.main as cli\n"
        "def pressed(args):\n"
        "    raise KeyboardInterrupt  # Ctrl-C\n"
        "cli.main = pressed\n"
        "sys.argv = ['lightning-accel', 'plan']\n"
        "lightning_accel_entry.main()\n"
    )
    result = _run_python(probe, tmp_path)
    assert result.returncode == 130
    assert result.stderr.strip() == "lightning-accel: stopped on SIGINT (Ctrl+C)"


def test_ctrl_c_while_the_choices_are_timed_says_nothing_was_trained(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    probe = (
        "import sys, lightning_accel_entry\n"
        "import lightning_accel.cli.choices as choices\n"
        "def pressed(run):\n"
        "    raise KeyboardInterrupt  # Ctrl-C during a timed trial\n"
        "choices.measure_choices = pressed\n"
        f"sys.argv = ['lightning-accel', 'train', 'hydra.run.dir={run_dir}']\n"
        "lightning_accel_entry.main()\n"
    )
    result = _run_python(probe, tmp_path, timeout=180)
    assert result.returncode == 130, result.stderr[-3000:]
    said = "stopped on SIGINT before the run began: nothing trained or saved; "
    assert f"{said}{run_dir} holds Hydra's record of the job only" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", LOCK_FILE, "train.log"]
    assert f"[INFO] - {said}" in (run_dir / "train.log").read_text()


def test_importing_the_package_registers_its_strategies() -> None:
    probe = (
        "import lightning_accel\n"
        "from lightning.pytorch.strategies import StrategyRegistry\n"
        "print('accel_ddp' in StrategyRegistry, 'fsdp2' in StrategyRegistry)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_ACCEL_DEFER_IMPORTS"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_upstream_deprecations_are_filtered_by_module_and_the_users_own_are_kept() -> None:
    from lightning_accel.cli.console import quiet_upstream

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a user who asks for deprecations gets
        quiet_upstream()
        for module in ("torch.distributed.fsdp", "lightning.pytorch.trainer", "my_project.data"):
            warnings.warn_explicit("old API", DeprecationWarning, f"{module}.py", 1, module)
    assert [str(w.filename) for w in caught] == ["my_project.data.py"]


def test_torch_xlas_chatter_is_filtered_and_a_users_chosen_xla_log_level_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning_accel.cli.console import XLA_CPP_LOG_LEVEL, quiet_upstream

    message = "Using a non-tuple sequence for multidimensional indexing is deprecated"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for chosen, expected in ((None, "2"), ("0", "0")):
            if chosen is None:
                monkeypatch.delenv(XLA_CPP_LOG_LEVEL, raising=False)
            else:
                monkeypatch.setenv(XLA_CPP_LOG_LEVEL, chosen)
            quiet_upstream()
            assert os.environ[XLA_CPP_LOG_LEVEL] == expected, "errors only, unless chosen"
        for module in ("torch_xla.distributed.spmd.xla_sharded_tensor", "my_project.data"):
            warnings.warn_explicit(message, UserWarning, f"{module}.py", 1, module)
    assert [str(w.filename) for w in caught] == ["my_project.data.py"]
    # torch_xla logs each barrier's rendezvous on the root logger, which Hydra prints
    xla_module = os.path.join("site-packages", "torch_xla", "core", "xla_model.py")
    records = [
        logging.LogRecord("root", level, path, 1, "Joining rendezvous 'reduce'...", None, None)
        for level in (logging.INFO, logging.WARNING)
        for path in (xla_module, os.path.join("my_project", "train.py"))
    ]
    shown = [logging.getLogger().filter(record) for record in records]
    assert shown == [False, True, True, True], "torch_xla's INFO only is dropped"


def test_fsdp2s_view_warning_is_filtered_for_the_packs_models_only() -> None:
    from lightning_accel.cli.console import quiet_upstream

    message = (
        "FSDP2-wrapped module ({}) returned a view tensor. An in-place op on this view (e.g., "
        "`x += y`) will silently drop the pre-backward hook and skip the all-gather"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_upstream()
        for name in ("FSDPTransformerBlock", "FSDPGPTLanguageModel", "FSDPUserBlock"):
            warnings.warn(message.format(name), UserWarning, stacklevel=1)
    assert [str(w.message).split(")")[0] for w in caught] == ["FSDP2-wrapped module (FSDPUserBlock"]


def test_fsdp2s_view_warning_of_checkpointed_blocks_is_filtered_for_the_packs_gpt_only(
    tmp_path: Path,
) -> None:
    from lightning_accel.cli.compose import compose_job
    from lightning_accel.cli.preflight import validated_run
    from lightning_accel.cli.runner import build_run

    message = "FSDP2-wrapped module (FSDPCheckpointWrapper) returned a view tensor. In-place ops"
    shown = {}
    for recipe in ("gpt", "image"):
        job = [f"recipe={recipe}", "logger=none", "callbacks=minimal"]
        run = validated_run(compose_job(job), tmp_path / recipe)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_run(run)
            warnings.warn(message, UserWarning, stacklevel=1)
        shown[recipe] = [
            str(w.message) for w in caught if "FSDPCheckpointWrapper" in str(w.message)
        ]
    assert shown == {"gpt": [], "image": [message]}


def test_the_process_ends_with_the_commands_status_after_every_exit_handler(
    tmp_path: Path,
) -> None:
    # ProcessEnd skips the interpreter's teardown, not what the exit handlers registered
    # after it do, nor output still buffered.
    for code, status in (("None", 0), ("3", 3), ("'a message'", 1)):
        probe = (
            "import atexit, pathlib, sys\n"
            "from lightning_accel.cli.process_end import ProcessEnd\n"
            "end = ProcessEnd()\n"
            f"atexit.register(pathlib.Path({str(tmp_path / 'handler-ran')!r}).touch)\n"
            "print('buffered', end='')\n"
            f"end.record({code})\n"
            f"sys.exit({code})\n"
        )
        env = {**os.environ, "LIGHTNING_ACCEL_DEFER_IMPORTS": "1"}  # no Lightning needed
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == status, (code, result.stderr)
        assert result.stdout == "buffered"
        assert (tmp_path / "handler-ran").exists()
        (tmp_path / "handler-ran").unlink()


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["bench", "--out", "", "hardware=cpu"], "bench: argument --out: an empty path names"),
        (["verify", "--dry-run", "--work", " "], "verify: argument --work: an empty path names"),
        (["bench", "--cell-timeout", "nan"], "--cell-timeout=nan must be a finite number of"),
        (["bench", "--cell-timeout", "inf"], "--cell-timeout=inf must be a finite number of"),
        (["verify", "--dry-run", "--deadline", "0"], "--deadline=0.0 must be a finite number of"),
        (["train", "--config-dir", "", "--cfg", "job"], "--config-dir='' is not a directory"),
        (["plan", "--config-dir", ""], "--config-dir='' is not a directory"),
        (["plan", "--world", ""], "--world='' is not a list of counts"),
        (["consolidate", "", "out.ckpt"], "SHARDED='' is empty; give a path."),
        (["consolidate", "sharded", " "], "OUT=' ' is empty; give a path."),
        (["doctor", "--trace", ""], "--trace='' is empty; give a run directory."),
        (
            ["train", "ckpt_path=", "--cfg", "job"],
            "ckpt_path='' is empty; give a checkpoint file, or",
        ),
        (
            ["validate", "ckpt_path=", "--cfg", "job"],
            "ckpt_path='' is empty; give a checkpoint file.",
        ),
    ],
)
def test_empty_paths_and_seconds_that_are_not_finite_are_refused(
    argv: list[str],
    sentence: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty path was this directory: results were written here
    assert sentence in refusal(argv, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["train", "bench", "plan", "doctor", "consolidate"])
def test_help_verb_is_the_verbs_own_help(verb: str, capsys: pytest.CaptureFixture) -> None:
    def printed(argv: list[str]) -> str:
        try:
            assert main(argv) == 0
        except SystemExit as exit_info:  # Hydra's help exits by itself
            assert exit_info.code in (0, None)
        return capsys.readouterr().out

    helped = printed(["help", verb])
    assert helped == printed([verb, "--help"]) and helped.strip()
