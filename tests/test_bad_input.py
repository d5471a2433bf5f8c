"""Bad input ends with exit code 2 and one sentence naming the key, the value and the valid
choices: no traceback, nothing spawned, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import HARDWARE_PROFILES, TEST_IMPORTS, TINY, run_cli

from lightning_accel.cli.main import main

# a user's model whose layers take their sizes at the first batch
LAZY_IMAGES = [
    "recipe=custom",
    "model._target_=helpers.LazyImageClassifier",
    "data._target_=lightning_accel.data.SyntheticImageDataModule",
]
CASES = {
    "unknown group option": (
        ["hardware=tpu9"],
        [
            "hardware='tpu9'",
            HARDWARE_PROFILES,
        ],
    ),
    "unknown key": (["trainer.max_stepz=3"], ["trainer.max_stepz", "closest: max_steps"]),
    "trainer argument a profile sets": (
        ["trainer.devices=4"],
        ["trainer.devices='4' is set by the run's profiles; use hardware.devices instead"],
    ),
    "added trainer argument a profile sets": (
        ["+trainer.precision=bf16-mixed"],
        ["trainer.precision", "use optimization.precision instead"],
    ),
    "trainer argument the runner's checkpoint callback would ignore": (
        ["trainer.model_registry=my-model"],
        ["trainer.model_registry", "use callbacks.checkpoint with litmodels'"],
    ),
    "wrong type of a trainer argument": (
        ["trainer.check_val_every_n_epoch=often"],
        ["trainer.check_val_every_n_epoch='often' is not a valid integer"],
    ),
    "unknown top-level key": (["epochs=3"], ["epochs", "trainer"]),
    # the preflight checked data.source here, the job then looked for it in its run directory
    "no data held out for validation": (
        ["data.val_fraction=0"],
        ["data.val_fraction=0 must be above 0 and below 1", "trainer.limit_val_batches=0"],
    ),
    "every image held out for validation": (
        ["recipe=image", "data.val_fraction=1"],
        ["data.val_fraction=1 must be above 0 and below 1"],
    ),
    # Hydra ran the one job with the search left out
    "search without --multirun": (
        ["search=lr"],
        ["search='lr' is a search, a sweep of trials, which runs only with --multirun (-m)"],
    ),
    "job moved into its run directory": (
        ["hydra.job.chdir=true"],
        ["hydra.job.chdir=True is not supported: the command's relative paths"],
    ),
    "data chosen as if it were a config group": (
        ["data=images"],
        ["data='images' is not a config group", "recipe=NAME (custom, gpt, image)"],
    ),
    "wrong type": (["trainer.max_steps=many"], ["trainer.max_steps='many'", "integer"]),
    "zero size": (["data.batch_size=0"], ["data.batch_size=0", "positive"]),
    "negative size": (["model.d_model=-8"], ["model.d_model=-8", "positive"]),
    "negative trainer size": (["trainer.max_steps=-2"], ["trainer.max_steps=-2", "positive"]),
    "negative validation batches": (
        ["trainer.limit_val_batches=-1"],
        ["trainer.limit_val_batches=-1", "0 or more"],
    ),
    "missing data path": (["data.source=/no/such/dir"], ["data.source='/no/such/dir'", "stdlib"]),
    "empty run directory": (
        ["hydra.run.dir="],
        ["hydra.run.dir='' is empty; give a directory (. for this one)"],
    ),
    "unwritable output directory": (
        ["hydra.run.dir=FILE/run"],
        ["hydra.run.dir", "not a directory"],
    ),
    "model context shorter than the samples": (
        ["model.seq_len=16"],
        ["model.seq_len=16 is shorter than the samples (data.seq_len=128)"],
    ),
    "model vocabulary smaller than the tokenizer's": (
        ["model.vocab_size=100"],
        ["model.vocab_size=100 is smaller than the tokenizer's vocabulary; set it to 256"],
    ),
    "image classes the model's head does not have": (
        ["recipe=image", "model.num_classes=3"],
        ["model.num_classes=3 does not match data.source='digits', which has 10 classes"],
    ),
    # torch's SyncBatchNorm failed in the ranks on the CPU; FSDP2 left it out without a word
    "synchronized BatchNorm on the CPU": (
        ["trainer.sync_batchnorm=true", "hardware=ddp_cpu"],
        ["trainer.sync_batchnorm=True needs CUDA devices", "runs on cpu", "set it false"],
    ),
    "synchronized BatchNorm under FSDP2": (
        ["trainer.sync_batchnorm=true", "hardware=fsdp2_cpu"],
        ["trainer.sync_batchnorm=True does nothing under hardware=fsdp2_cpu", "hardware=ddp"],
    ),
    "weight averaging under FSDP2": (
        ["callbacks=[default,ema]", "hardware=fsdp2_cpu"],
        ["callbacks.ema=", "cannot run under hardware=fsdp2_cpu", "use DDP"],
    ),
    "negative speed monitor warm-up": (
        ["callbacks.speed.warmup_steps=-1"],
        ["callbacks.speed.warmup_steps=-1 must be a number of 0 or more"],
    ),
    "checkpoint directory through a file": (
        ["callbacks.checkpoint.dirpath=FILE/checkpoints"],
        ["callbacks.checkpoint.dirpath=", "FILE/checkpoints", "is not a directory"],
    ),
    "logger directory through a file": (
        ["logger=tensorboard", "logger.tensorboard.save_dir=FILE/events"],
        ["logger.tensorboard.save_dir=", "is not a directory; choose a writable directory"],
    ),
    "unknown precision": (["optimization.precision=fp8"], ["optimization.precision", "bf16-mixed"]),
    "absent accelerator": (["hardware.accelerator=cuda"], ["hardware.accelerator='cuda'", "cpu"]),
    "too many devices": (["hardware.devices=64"], ["hardware.devices=64", "device"]),
    "Lightning's -1 for every device": (
        ["hardware.devices=-1"],
        ["hardware.devices=-1 is Lightning's 'every device'; write hardware.devices=auto"],
    ),
    "unimportable target": (["model._target_=no_pkg.Model"], ["model._target_='no_pkg.Model'"]),
    "argument the model lacks": (["+model.depth=3"], ["model.depth=3", "n_layer"]),
    "misspelt option added to a fixed section": (
        ["+trainer.max_step=5"],
        ["trainer.max_step=5 is not a known key under 'trainer'; closest: max_steps"],
    ),
    "misspelt option added to a nested section": (
        ["+optimization.compile.bakend=eager"],
        ["optimization.compile.bakend='eager' is not a known key under 'optimization.compile'"],
    ),
    "misspelt Hydra key": (
        ["hydra.job.chdr=true"],
        ["hydra.job.chdr='true' is not a known key under 'hydra.job'; closest: chdir."],
    ),
    "unknown key of a section without a schema": (
        ["hydra.launcher.nope=1"],
        ["hydra.launcher.nope='1' is not a known key under 'hydra.launcher'."],
    ),
    "callback entry that is not a node": (
        ["callbacks.extra=[1]"],
        ["callbacks.extra[0]=1 is not a _target_ node; give {_target_: CLASS, ...}"],
    ),
    "callback that is not a Callback": (
        ["callbacks.extra=[{_target_: builtins.dict}]"],
        ["callbacks.extra[0]._target_='builtins.dict' builds a dict, not a Lightning Callback"],
    ),
    "logger that is not a Logger": (
        ["logger=csv", "logger.csv._target_=builtins.dict"],
        ["logger.csv._target_='builtins.dict' builds a dict, not a Lightning Logger"],
    ),
    "model that is not a LightningModule": (
        ["model._target_=builtins.dict"],
        ["model._target_='builtins.dict' builds a dict, not a LightningModule"],
    ),
    "data that is not a LightningDataModule": (
        ["data._target_=builtins.dict"],
        ["data._target_='builtins.dict' builds a dict, not a LightningDataModule"],
    ),
    "model summary depth below -1": (
        ["callbacks=default", "callbacks.model_summary.max_depth=-5"],
        ["callbacks.model_summary=", "max_depth must be -1 (every layer), 0 (none) or more"],
    ),
    "interpolation that resolves to nothing": (
        ["trainer.max_steps=${nope}"],
        ["trainer.max_steps='${nope}' is invalid", "Interpolation key 'nope' not found"],
    ),
    "a key given twice, the first time invalid": (
        ["trainer.max_steps=abc", "trainer.max_steps=2"],
        ["trainer.max_steps='abc' is not a valid integer"],
    ),
    "sweep without --multirun": (["seed=1,2"], ["seed='1,2'", "--multirun"]),
    "sweep inside a list of values": (
        ["--multirun", "trainer.max_steps=range(6,8),7"],
        ["trainer.max_steps='range(6,8),7' puts a sweep inside a list of values"],
    ),
    "profiler Lightning does not have": (
        ["trainer.profiler=nope"],
        ["trainer.profiler='nope' is not supported; valid choices: simple, advanced, pytorch"],
    ),
    "XLA profiler off XLA": (
        ["hardware=cpu", "trainer.profiler=xla"],
        ["trainer.profiler='xla' profiles XLA devices only"],
    ),
    "config group set to null": (
        ["logger=null"],
        ["logger='null' cannot be given on the command line; choose one of the logger options"],
    ),
    "glob that matches no option": (
        ["--multirun", "hardware=glob(zzz*)"],
        ["hardware='glob(zzz*)' matches no option of the config group; valid choices: auto,"],
    ),
    "glob of a key that is no group": (
        ["--multirun", "seed=glob(*)"],
        ["seed='glob(*)' is not a config group."],
    ),
    "--help with an unknown option": (
        ["--help", "hardware=nope"],
        ["hardware='nope' is not a hardware option; valid choices: auto,"],
    ),
    "--info with an unparseable override": (
        ["--info", "defaults", "x"],
        ["override='x' cannot be parsed; write KEY=VALUE or GROUP=OPTION."],
    ),
    # Lightning names checkpoints so: "cannot be parsed; write KEY=VALUE" was all it said
    "checkpoint path holding = unquoted": (
        ["ckpt_path=ckpts/epoch=0-step=10.ckpt"],
        [
            "cannot be parsed: Hydra's grammar reserves a character of its value; quote the "
            """value for Hydra, in the shell as "ckpt_path='ckpts/epoch=0-step=10.ckpt'"."""
        ],
    ),
    "home directory as ~": (
        ["data.source=~/corpus"],
        [f"nothing expands it; write the home directory out: data.source={Path.home()}/corpus."],
    ),
    "--resolve of Hydra's own section": (
        ["--cfg", "all", "--resolve"],
        ["train --cfg all --resolve cannot resolve Hydra's section", "--cfg job --resolve"],
    ),
    "--package naming no key of the config shown": (
        ["--cfg", "job", "--package", "hydra.job"],
        ["--package='hydra.job' names nothing in the config --cfg job prints", "model, "],
    ),
    "flag Hydra does not have": (["--bogus"], ["train: unrecognized arguments: --bogus", "--help"]),
    "run id that is not one name": (
        ["launcher=torchrun", "launcher.run_id=a/b"],
        ["launcher.run_id='a/b' must be one name of letters, digits"],
    ),
    "DDP option DistributedDataParallel does not take": (
        ["hardware=ddp_cpu", "+hardware.strategy_options.bogus=1"],
        ["hardware.strategy_options.bogus=1 is not an option of accel_ddp; valid choices: "],
    ),
    "pack option under Lightning's own DDP": (
        ["hardware=ddp_cpu", "hardware.strategy=ddp"],
        ["hardware.strategy_options.comm_hook='none' is not an option of ddp"],
    ),
    "unparseable override": (["=3"], ["override='=3'", "KEY=VALUE"]),
    "Lightning's name for the last checkpoint": (
        ["ckpt_path=last"],
        ["ckpt_path='last' is Lightning's name for a checkpoint", "RUN_DIR/checkpoints/last.ckpt"],
    ),
    "missing checkpoint": (["ckpt_path=/no/such.ckpt"], ["ckpt_path='/no/such.ckpt'", "sharded"]),
    "model node deleted": (
        ["~model"],
        ["model._target_=None is missing, and a run needs its LightningModule"],
    ),
    "data target deleted": (
        ["~data._target_"],
        ["data._target_=None is missing, and a run needs its LightningDataModule"],
    ),
    "custom recipe without targets": (["recipe=custom"], ["model._target_", "recipe=custom"]),
    "logger without its package": (
        ["logger=csv", "logger.csv._target_=helpers.MissingPackageLogger"],
        ["logger.csv._target_", "fancy_tracker", "[tracking]"],
    ),
    "unknown comm hook": (
        ["hardware=ddp_cpu", "hardware.strategy_options.comm_hook=zip"],
        ["comm_hook='zip'", "none, fp16, bf16, powersgd"],
    ),
    "shard classes matching nothing": (
        ["hardware=fsdp2_cpu", "hardware.strategy_options.shard_classes=[Layer]"],
        ["shard_classes=['Layer']", "GPTLanguageModel", "TransformerBlock"],
    ),
    "unknown strategy": (["hardware.strategy=ddp9"], ["hardware.strategy", "fsdp2"]),
    "mesh that does not fill the world": (
        ["hardware=fsdp2_tp_cpu", "hardware.devices=3"],
        ["data_parallel_shard=-1 cannot fill a world of 3 ranks", "multiply to 2"],
    ),
    "mesh that multiplies to another world": (
        ["hardware=hsdp_cpu", "hardware.strategy_options.data_parallel_shard=3"],
        ["hardware.strategy_options='2 x 3 x 1'", "not the world size 4"],
    ),
    "tensor parallel size that does not divide the width": (
        ["hardware=tp_cpu", "hardware.devices=3"],
        ["tensor_parallel=3 does not divide the width", "1, 2, 4"],
    ),
    "sequence the tensor parallel size does not divide": (
        ["hardware=tp_cpu", "data.seq_len=33"],
        ["data.seq_len=33 is not divisible by", "tensor_parallel=2", "32, 34"],
    ),
    "tensor parallel for a convolutional network": (
        ["recipe=image", "hardware=tp_cpu"],
        [
            "tensor_parallel_plan='{}' is needed: BasicBlock has no LayerNorm or RMSNorm",
            "or train with data parallelism (ddp, fsdp2)",
        ],
    ),
    "tensor parallel plan matching nothing": (
        ["hardware=tp_cpu", "+hardware.strategy_options.tensor_parallel_plan={decoder.*:colwise}"],
        ["tensor_parallel_plan='decoder.*' matches no module", "model.blocks.0.attn.qkv"],
    ),
    "unknown tensor parallel style": (
        [
            "hardware=tp_cpu",
            "+hardware.strategy_options.tensor_parallel_plan={model.head:diagonal}",
        ],
        ["model.head='diagonal' is not a style", "colwise, rowwise, sequence_parallel"],
    ),
    "tensor parallel on a strategy that cannot run it": (
        ["hardware=ddp_cpu", "+hardware.strategy_options.tensor_parallel=2"],
        ["tensor_parallel=2 is a device-mesh option that strategy accel_ddp cannot run", "tp_cpu"],
    ),
    "precision the device cannot run": (
        ["optimization.precision=16-mixed", "hardware=cpu"],
        ["optimization.precision='16-mixed' cannot run on cpu", "bf16-mixed"],
    ),
    "unknown compile backend": (
        ["optimization.compile.backend=turbo"],
        ["optimization.compile.backend='turbo'", "inductor"],
    ),
    "unknown compile mode": (
        ["optimization.compile.mode=ludicrous"],
        ["optimization.compile.mode='ludicrous'", "max-autotune"],
    ),
    "activation checkpointing without blocks": (
        [
            "recipe=custom",
            "model._target_=helpers.BlocklessModule",
            "data._target_=lightning_accel.data.TokenDataModule",
            "optimization.activation_checkpointing.enabled=true",
        ],
        ["optimization.activation_checkpointing.enabled=True", "BlocklessModule"],
    ),
    "lazy layers under DDP": (
        [*LAZY_IMAGES, "hardware=ddp_cpu"],
        [
            "hardware='ddp_cpu' runs accel_ddp on 2 devices, which needs every weight",
            "LazyImageClassifier's LazyConv2d has none until its first batch",
        ],
    ),
    "lazy layers under FSDP2 on one device": (
        [*LAZY_IMAGES, "hardware.strategy=fsdp2"],
        ["runs fsdp2 on 1 device, which needs every weight", "without FSDP2"],
    ),
    "channels-last weights for lazy layers": (
        [*LAZY_IMAGES, "optimization.channels_last=true"],
        ["optimization.channels_last=True needs initialized weights", "LazyConv2d"],
    ),
    "text too short for one batch": (
        ["data.source=FILE"],
        ["data.seq_len=128 leaves too few samples", "(0 for training, 0 for validation"],
    ),
    "channels-last weights under FSDP2": (
        ["recipe=image", "hardware=fsdp2_cpu", "optimization.channels_last=true"],
        ["optimization.channels_last=True cannot run under hardware=fsdp2_cpu", "DDP"],
    ),
    "channels-last auto is the profile's, not the data's": (
        ["recipe=image", "data.channels_last=auto"],
        ["data.channels_last='auto' is not of the type", "ImageDataModule takes: bool"],
    ),
    "channels-last auto on hardware this machine lacks": (
        ["recipe=image", "optimization=fast", "hardware=ddp"],
        ["hardware.accelerator='cuda' is not available on this machine"],
    ),
    "unknown channels-last choice": (
        ["optimization.channels_last=sometimes"],
        ["optimization.channels_last='sometimes'", "True, False, auto"],
    ),
    "validation interval past an epoch capped by limit_train_batches": (
        ["trainer.limit_train_batches=10", "trainer.val_check_interval=20"],
        ["trainer.val_check_interval=20 is more than the trainer.limit_train_batches=10"],
    ),
    "validation interval as a whole float past limit_train_batches": (
        ["trainer.limit_train_batches=10", "trainer.val_check_interval=20.0"],
        ["trainer.val_check_interval=20 is more than the trainer.limit_train_batches=10"],
    ),
    "data argument of the wrong type": (
        ["data.batch_size=1.5"],
        ["data.batch_size=1.5 is not of the type lightning_accel.data.TokenDataModule takes: int"],
    ),
    "model argument of the wrong item type": (
        ["recipe=image", "model.widths=[16,wide]"],
        ["model.widths=[16, 'wide'] is not of the type", "takes: Sequence[int]"],
    ),
    "strategy option of the wrong type": (
        ["hardware=fsdp2_cpu", "hardware.strategy_options.reshard_after_forward=maybe"],
        ["strategy_options.reshard_after_forward='maybe' is not of the type fsdp2 takes: bool"],
    ),
    "seed outside numpy's range": (["seed=-1"], ["seed=-1 must be from 0 to 4294967295"]),
    "validation interval past a whole epoch": (
        ["trainer.val_check_interval=1.5"],
        ["trainer.val_check_interval=1.5 must be a fraction in [0.0, 1.0] or a whole count"],
    ),
    "validation interval as a fraction without epochs": (
        ["trainer.val_check_interval=0.5", "trainer.check_val_every_n_epoch=null"],
        ["val_check_interval=0.5 is a fraction of an epoch, which needs trainer.check_val_every"],
    ),
    "validation interval as a duration timedelta refuses": (
        ["trainer.val_check_interval={sec:3}"],
        ["val_check_interval={'sec': 3} must be a duration above 0: DD:HH:MM:SS, or a dict"],
    ),
    "test batches past a whole set": (
        ["trainer.limit_test_batches=3.5"],
        ["trainer.limit_test_batches=3.5 must be a fraction in [0.0, 1.0] or a whole count"],
    ),
    # the maximum ends a fit whatever the minimum: min_steps=900 trained 500 steps
    "minimum steps above the maximum": (
        ["trainer.min_steps=900", "trainer.max_steps=500"],
        ["trainer.min_steps=900 is more than trainer.max_steps=500, which ends the run first"],
    ),
    "minimum epochs above the maximum": (
        ["trainer.min_epochs=3", "trainer.max_epochs=2", "trainer.max_steps=-1"],
        ["trainer.min_epochs=3 is more than trainer.max_epochs=2"],
    ),
    "time limit that is no duration": (
        ["trainer.max_time=abc"],
        ["trainer.max_time='abc' must be a duration above 0: DD:HH:MM:SS"],
    ),
    "time limit of no time, named as given": (
        ["trainer.max_time=00:00:00:00"],
        ["trainer.max_time='00:00:00:00' must be a duration above 0"],
    ),
    "callback argument the callback refuses": (
        ["callbacks.checkpoint.save_top_k=-2"],
        [
            "callbacks.checkpoint='lightning_accel.callbacks.RunCheckpoint' refuses its "
            "arguments (MisconfigurationException: Invalid value for save_top_k=-2"
        ],
    ),
    "callback argument new to its node": (
        ["callbacks.checkpoint.every_n_train_steps=50"],
        ["is new under 'callbacks.checkpoint'; add it as +callbacks.checkpoint.every_n_train"],
    ),
    "callback that needs a logger, without one": (
        ["callbacks=[default,lr_monitor]"],
        ["logger='none' leaves callbacks.lr_monitor (LearningRateMonitor) nothing to write to"],
    ),
    "unknown sampling": (["data.sampling=striped"], ["data.sampling='striped'", "random"]),
    "missing tokenizer file": (
        ["data.tokenizer=/no/tokenizer.json"],
        ["data.tokenizer='/no/tokenizer.json'", "bytes, a tokenizer.json"],
    ),
    "tokenizer file that is not one": (
        ["data.tokenizer=FILE"],
        ["data.tokenizer='FILE' is not a tokenizers tokenizer.json file"],
    ),
    "unknown XLA checkpoint form": (
        ["hardware=xla_cpu_spmd", "hardware.strategy_options.checkpoint=full"],
        ["hardware.strategy_options.checkpoint='full'", "gathered, sharded"],
    ),
    "XLA profile without torch_xla": (
        ["hardware=xla_cpu_spmd"],
        ["hardware.accelerator='pjrt'", "pip install 'lightning-accel[xla]'"],
    ),
    "unknown launcher": (
        ["launcher=k8s"],
        ["launcher='k8s'", "local, ray, slurm, slurm_local, torchrun"],
    ),
    "torchrun without a run id": (["launcher=torchrun"], ["launcher.run_id", "every node"]),
    "several nodes without a multi-node launcher": (
        ["launcher.nnodes=2"],
        ["launcher.nnodes=2", "launcher=torchrun"],
    ),
    "node rank outside the nodes": (
        ["launcher=torchrun", "launcher.run_id=a", "launcher.nnodes=2", "launcher.node_rank=2"],
        ["launcher.node_rank=2", "0, 1"],
    ),
    "rendezvous endpoint without a port": (
        ["launcher=torchrun", "launcher.run_id=a", "launcher.rdzv_endpoint=node0"],
        ["launcher.rdzv_endpoint='node0'", "HOST:PORT"],
    ),
    "node counts that disagree": (
        ["launcher=torchrun", "launcher.run_id=a", "launcher.nnodes=2", "hardware.num_nodes=3"],
        ["launcher.nnodes=2", "hardware.num_nodes=3"],
    ),
    "SLURM tasks that are not one per rank": (
        ["launcher=slurm_local", "hardware=ddp_cpu", "hydra.launcher.tasks_per_node=3"],
        ["1 x 3 = 3", "1 x 2"],
    ),
    "unknown verb": (None, ["'fly'", "train"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_sentence(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    overrides, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file where a directory is expected")
    argv = ["fly"] if overrides is None else ["train", "logger=none", *overrides]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got: {err}"
    assert lines[0].startswith("lightning-accel: error: ")
    assert lines[0].endswith(".")
    for fragment in expected:
        assert fragment in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"], "nothing may be written"


def test_bad_input_from_the_real_command_has_no_traceback(tmp_path: Path) -> None:
    result = run_cli(["train", "hardware=nope", *TINY], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        "lightning-accel: error: hardware='nope' is not a hardware option; "
        f"valid choices: {HARDWARE_PROFILES}."
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_slurm_launcher_where_slurm_is_absent_exits_2_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", "launcher=slurm", "hardware.devices=1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lightning-accel: error: launcher='slurm' submits jobs with SLURM's sbatch and srun, "
        "which this machine does not have on its PATH; submit from a login node of the "
        "cluster, or run the same jobs here with launcher=slurm_local."
    ]
    assert list(tmp_path.iterdir()) == [], "no sweep directory"


def test_bad_value_in_a_sweep_stops_every_job(tmp_path: Path) -> None:
    result = run_cli(["train", "-m", *TINY, "data.batch_size=4,0"], cwd=tmp_path)
    assert result.returncode == 2
    assert "data.batch_size=0" in result.stderr
    assert list(tmp_path.iterdir()) == [], "no job may start when one is invalid"


def test_text_that_is_not_utf8_is_named_before_any_run_starts(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("plain text\n" * 2000)
    (corpus / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 100)
    data = [f"data.source={corpus}", "data.suffixes=[.txt]"]
    result = run_cli(["train", *TINY, *data, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lightning-accel: error: data.source='{corpus / 'latin1.txt'}' is not UTF-8 text "
        "(byte 3); valid choices: convert it to UTF-8, data.skip_undecodable=true."
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"], "no run directory"


@pytest.mark.parametrize("hardware", ["cpu", "ddp_cpu"])
def test_validation_interval_longer_than_an_epoch_exits_2(hardware: str, tmp_path: Path) -> None:
    overrides = [*TINY, f"hardware={hardware}", "trainer.val_check_interval=10000000"]
    result = run_cli(["train", *overrides], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, "the ranks' error is reported once, by the command"
    assert errors[0].startswith(
        "lightning-accel: error: trainer.val_check_interval=10000000 is more"
    )
    assert "limit_val_batches=0" in errors[0]


def test_a_parameter_the_loss_does_not_use_under_ddp_names_the_option_that_allows_it(
    tmp_path: Path,
) -> None:
    overrides = [*TINY, "hardware=ddp_cpu", "model._target_=helpers.GPTWithSpareLayer"]
    refused = run_cli(
        ["train", *overrides, "hydra.run.dir=refused"], cwd=tmp_path, env=TEST_IMPORTS
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "lightning-accel: error: hardware.strategy_options.find_unused_parameters=False leaves "
        "DDP waiting for the gradients of parameters of GPTWithSpareLayer that its "
        "training_step's loss does not use; give "
        "+hardware.strategy_options.find_unused_parameters=true (DDP then walks the autograd "
        "graph every step), or leave those parameters out of the model."
    ]
    allowed = [*overrides, "+hardware.strategy_options.find_unused_parameters=true"]
    trained = run_cli(["train", *allowed, "hydra.run.dir=allowed"], cwd=tmp_path, env=TEST_IMPORTS)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "allowed" / "summary.json").read_text())["steps"] == 4


def test_no_validation_is_a_valid_choice_as_the_interval_error_suggests() -> None:
    from lightning_accel.config import TrainerConfig

    assert TrainerConfig(limit_val_batches=0).limit_val_batches == 0


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK"])
def test_a_stray_rank_in_the_environment_of_a_run_no_launcher_started_is_refused(
    tmp_path: Path, variable: str
) -> None:
    """Lightning would take the process for rank 1 and write neither summary nor
    hyper-parameters, without a word."""
    outside = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS")
    assert not any(name in os.environ for name in outside)
    refused = run_cli(["train", *TINY, "hydra.run.dir=run"], cwd=tmp_path, env={variable: "1"})
    assert refused.returncode == 2, refused.stderr[-3000:]
    error = refused.stderr.strip()
    assert error.startswith(f"lightning-accel: error: {variable}='1' is set in the ")
    assert error.endswith("or unset it.") and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("run_dir", "problem"),
    [
        ("/proc/lightning-accel-run", "cannot be created because /proc is not writable"),
        ("/proc", "cannot be written because /proc is not writable"),
    ],
)
def test_a_run_directory_on_a_pseudo_file_system_is_refused_before_hydra_makes_it(
    tmp_path: Path, run_dir: str, problem: str
) -> None:
    """Where the permission bits say yes (to root, for /proc) a directory there still
    cannot be made: Hydra failed with a traceback."""
    refused = run_cli(["train", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip() == (
        f"lightning-accel: error: hydra.run.dir='{run_dir}' {problem}; choose a writable directory."
    )


@pytest.mark.parametrize("meta_first", [False, True])
def test_a_models_own_value_error_is_one_sentence_naming_its_target(
    tmp_path: Path, meta_first: bool
) -> None:
    """Raised while it is built on the meta device, before launch; raised only when the run
    builds it (the meta device failed first), inside the job. It was Hydra's "Error
    executing job" with exit 1."""
    overrides = ["model._target_=helpers.CheckedGPT", "+model.max_width=16"]
    overrides += [f"+model.meta_first={str(meta_first).lower()}"]
    refused = run_cli(
        ["train", *TINY, *overrides, "hydra.run.dir=run"], cwd=tmp_path, env=TEST_IMPORTS
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        "lightning-accel: error: model='helpers.CheckedGPT' refuses its arguments "
        "(ValueError: d_model=32 is wider than 16)."
    )
    assert "Traceback" not in refused.stderr and "Error executing job" not in refused.stderr
    assert (tmp_path / "run").exists() == meta_first, "refused before the job, when it can be"
