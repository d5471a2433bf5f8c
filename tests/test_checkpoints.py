"""Sharded checkpoints: damage is reported before anything runs; consolidation by CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    MODEL,
    SHAPE,
    TINY,
    LoggingRegression,
    Runs,
    quiet_trainer,
    refusal,
    run_cli,
    write_crafted_checkpoint,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_accel import files
from lightning_accel.callbacks import ExactResume
from lightning_accel.checkpoints import (
    SavedProgress,
    check_same_model,
    consolidate_checkpoint,
    optimizer_by_index,
    run_weights,
    saved_progress,
    saved_step,
)
from lightning_accel.cli.main import main
from lightning_accel.errors import ConfigError
from lightning_accel.models import GPTLanguageModel
from lightning_accel.safe_load import read_dcp_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sharded(runs: Runs) -> Path:
    """A checkpoint saved by FSDP2 on 2 ranks after 10 steps (the parallel tests' run)."""
    checkpoint = runs.checkpoint(runs.train("fsdp2", "fsdp2_cpu", 2), step=10)
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    return checkpoint


def _delete_shard(checkpoint: Path) -> None:
    (checkpoint / "__1_0.distcp").unlink()


def _truncate_shard(checkpoint: Path) -> None:
    with (checkpoint / "__0_0.distcp").open("r+b") as handle:
        handle.truncate(100)


def _delete_index(checkpoint: Path) -> None:
    (checkpoint / ".metadata").unlink()


DAMAGE = {
    "missing shard": (_delete_shard, "is incomplete: shard __1_0.distcp is missing."),
    "truncated shard": (_truncate_shard, "is corrupt: shard __0_0.distcp holds 100 of"),
    "missing index": (_delete_index, ".metadata is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_refused_before_the_run(
    damage: str,
    sharded: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    damage_function, expected = DAMAGE[damage]
    copy = tmp_path / "copy.ckpt"
    shutil.copytree(sharded, copy)
    damage_function(copy)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", f"ckpt_path={copy}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.ckpt"], "no run directory"


def test_consolidate_command_writes_one_loadable_file(sharded: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.ckpt"
    result = run_cli(["consolidate", str(sharded), str(output)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {output} (" in result.stderr and " MiB/s of shards)" in result.stderr
    checkpoint = torch.load(output, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 10
    assert saved_step(sharded) == saved_step(output) == 10, "read from the shards' loop state"
    assert checkpoint["state_dict"]["model.token_embedding.weight"].shape == (256, 32)
    assert len(checkpoint["optimizer_states"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"], "no temporary file is left"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["consolidate"], "two arguments"),
        (["consolidate", "/no/such/dir", "out.ckpt"], "is not a checkpoint file or sharded"),
        (["consolidate", "SHARDED", "."], "is a directory"),
        (["consolidate", "SHARDED", "SHARDED/meta.pt/out.ckpt"], "meta.pt is not a directory"),
        (["consolidate", "SHARDED/meta.pt", "out.ckpt"], "is one checkpoint file already"),
    ],
)
def test_consolidate_bad_input_exits_2(
    sharded: Path,
    arguments: list[str],
    fragment: str,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert fragment in refusal([a.replace("SHARDED", str(sharded)) for a in arguments], capsys)
    assert list(tmp_path.iterdir()) == []


def test_consolidating_onto_a_disk_that_cannot_hold_the_file_writes_nothing(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "free_bytes", lambda path: 2**10)
    output = tmp_path / "model.ckpt"
    said = refusal(["consolidate", str(sharded), str(output)], capsys, code=1)
    assert said.startswith(f"lightning-accel: error: {output} needs about ")
    assert said.endswith("MiB, more than the 0.0 MiB free on its file system; nothing was written.")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("crafted_file", "plain_pickle"), [("meta.pt", False), (".metadata", True)]
)
@pytest.mark.parametrize("verb", ["consolidate", "train"])
def test_a_sharded_checkpoint_with_a_crafted_pickle_is_refused_and_runs_nothing(
    sharded: Path,
    crafted_file: str,
    plain_pickle: bool,
    verb: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy = tmp_path / "copy.ckpt"
    shutil.copytree(sharded, copy)
    marker = tmp_path / "payload-ran"
    write_crafted_checkpoint(copy / crafted_file, marker, plain_pickle)
    monkeypatch.chdir(tmp_path)
    arguments = {
        "consolidate": ["consolidate", str(copy), "out.ckpt"],
        "train": ["train", "logger=none", f"ckpt_path={copy}"],
    }[verb]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{copy / crafted_file}' would run code when loaded" in err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.ckpt"], "nothing written"


def test_a_real_sharded_index_passes_the_allow_list_and_matches_torchs_reader(
    sharded: Path,
) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    ours = read_dcp_metadata(sharded)
    torchs = FileSystemReader(str(sharded)).read_metadata()
    assert ours.state_dict_metadata == torchs.state_dict_metadata
    assert ours.storage_data == torchs.storage_data


@pytest.mark.parametrize("form", ["sharded", "single file"])
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("model.d_model=64", "model.token_embedding.weight is [256, 32] there and [256, 64]"),
        ("model.n_layer=3", "model.blocks.2.attn.proj.bias is not in the checkpoint"),
    ],
)
def test_a_checkpoint_of_another_model_is_refused_before_the_run(
    sharded: Path,
    form: str,
    change: str,
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint = sharded
    if form == "single file":
        checkpoint = consolidate_checkpoint(sharded, tmp_path / "model.ckpt")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", *SHAPE, change, f"ckpt_path={checkpoint}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{checkpoint}' was saved from a different model" in err and fragment in err
    setting = change.split("=")[0]  # the setting the checkpoint was saved with, to give back
    assert err.endswith(f"settings of the run that wrote it: {setting}={MODEL[setting[6:]]}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no run directory"


def test_a_run_directory_holding_another_models_checkpoint_says_how_to_start_afresh(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = consolidate_checkpoint(sharded, run_dir / "checkpoints" / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", *SHAPE, "model.n_layer=3", f"hydra.run.dir={run_dir}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lightning-accel: error: the run directory's last checkpoint='{last}' was saved from "
        "a different model (model.blocks.2.attn.proj.bias is not in the checkpoint, "
        "model.blocks.2.attn.proj.weight is not in the checkpoint); give the model.* "
        "settings of the run that wrote it: model.n_layer=2; or give a new hydra.run.dir to "
        "start afresh."
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"], "nothing written"


def test_a_checkpoint_of_another_kind_of_model_names_that_and_no_settings(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPT's and the classifier's shared settings (learning_rate, ...) were offered as
    the remedy, though no setting of the classifier makes it the GPT."""
    checkpoint = consolidate_checkpoint(sharded, tmp_path / "model.ckpt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "recipe=image", f"ckpt_path={checkpoint}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "it was saved by another kind of model, with arguments (d_model, dropout, n_head, "
        "n_layer, seq_len, vocab_size) that ImageClassifier does not take; give that model's "
        "recipe or model._target_."
    ), err
    assert "model.learning_rate" not in err


def test_a_checkpoint_of_the_same_model_passes_the_check(sharded: Path) -> None:
    model = GPTLanguageModel(seq_len=32, **MODEL)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_same_model(sharded, expected)
    with pytest.raises(ConfigError, match="model.extra.weight is not in the checkpoint"):
        check_same_model(sharded, {**expected, "model.extra.weight": (256, 32)})


def test_a_stateless_optimizer_consolidates_with_no_state() -> None:
    saved = {"param_groups": [{"params": ["layer.weight", "layer.bias"], "lr": 0.05}]}
    assert optimizer_by_index(saved) == {
        "state": {},
        "param_groups": [{"params": [0, 1], "lr": 0.05}],
    }


def test_a_moved_run_directory_resumes_and_saves_its_last_checkpoint_under_the_same_name(
    tmp_path: Path, small_corpus: Path
) -> None:
    # Lightning restores ModelCheckpoint's last path only where its dirpath is unchanged; with
    # its version counter on, a moved run then saved last-v1.ckpt beside the last.ckpt the
    # next restart resumes from, so that restart would repeat steps without a word.
    first, moved = tmp_path / "first", tmp_path / "moved"
    args = ["train", *TINY, f"data.source={small_corpus}", "callbacks=minimal", "logger=none"]
    trained = run_cli([*args, f"hydra.run.dir={first}"], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    shutil.move(first, moved)
    resumed = run_cli([*args, "trainer.max_steps=6", f"hydra.run.dir={moved}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    checkpoints = moved / "checkpoints"
    assert not list(checkpoints.glob("*-v*.ckpt")), sorted(p.name for p in checkpoints.iterdir())
    assert saved_step(checkpoints / "last.ckpt") == 6


def _logged(run_dir: Path) -> list[tuple[str, ...]]:
    """The rows of a run's metrics.csv, less the speed figures (timings differ per run, and
    a resumed run starts its windows anew)."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [key for key in rows[0] if not key.startswith("speed/")]
    figures = [key for key in kept if key not in ("epoch", "step")]
    return [tuple(row[key] for key in kept) for row in rows if any(row[k] for k in figures)]


def test_a_run_continued_past_its_max_steps_equals_one_trained_there_without_a_stop(
    tmp_path: Path, small_corpus: Path
) -> None:
    # max_steps=3 ends the run between the checkpoints of its validations (every 2 steps),
    # inside its first epoch: Lightning kept last.ckpt at step 2 and counted the epoch done,
    # and deleted the first attempt's metrics.csv when the continuation logged; and seeded
    # again, the continuation drew its first steps' dropout masks a second time
    args = ["train", *TINY, f"data.source={small_corpus}", "callbacks=minimal", "model.dropout=0.1"]
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    first = run_cli([*args, "trainer.max_steps=3", f"hydra.run.dir={stopped}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert saved_step(stopped / "checkpoints" / "last.ckpt") == 3, "the final step is kept"
    for run_dir in (stopped, straight):
        done = run_cli([*args, "trainer.max_steps=6", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        # the pack's loaders keep their position and the callbacks are the same
        assert "keeps no position" not in done.stderr and "left unused" not in done.stderr
    weights, expected = run_weights(stopped), run_weights(straight)
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    assert _logged(stopped) == _logged(straight), "the whole history, in epoch 0 throughout"
    continued, whole = (json.loads((d / "summary.json").read_text()) for d in (stopped, straight))
    for key in ("steps", "first_train_loss", "last_train_loss", "validation"):
        assert continued[key] == whole[key], key
    assert [a["from_step"] for a in continued["attempts"]] == [0, 3]
    assert (continued["resumed_from_step"], whole["resumed_from_step"]) == (3, None)


def test_a_run_killed_after_an_epoch_end_checkpoint_resumes_to_the_uninterrupted_run(
    tmp_path: Path, small_corpus: Path
) -> None:
    # validation once an epoch saves in on_train_epoch_end (the image recipe's cadence):
    # under max_steps Lightning resumed that checkpoint by ending its epoch again, so every
    # later epoch's data came in another epoch's order and logged one step late
    args = [
        "train",
        *TINY,
        f"data.source={small_corpus}",
        "callbacks=minimal",
        "model.dropout=0.1",
        "trainer.max_steps=8",
        "trainer.limit_train_batches=3",
        "trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1",
    ]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    kill = ["+callbacks.kill._target_=lightning_accel.callbacks.fault_injection.KillRank"]
    kill += [
        "+callbacks.kill.point=training_step",
        "+callbacks.kill.step=4",
        "+callbacks.kill.rank=0",
    ]
    stopped = run_cli([*args, *kill, f"hydra.run.dir={killed}"], cwd=tmp_path)
    assert stopped.returncode == -9, stopped.stderr[-2000:]
    assert saved_step(killed / "checkpoints" / "last.ckpt") == 3, "the epoch's end"
    for run_dir in (killed, straight):
        done = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    weights, expected = run_weights(killed), run_weights(straight)
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    assert _logged(killed) == _logged(straight)


def test_an_epoch_that_max_steps_cut_short_does_not_count_toward_max_epochs(
    tmp_path: Path, small_corpus: Path
) -> None:
    # saved in on_train_epoch_end after 3 of its 10 batches, the epoch counts processed in
    # Lightning's loop state: the repeated run was told max_epochs=1 was already reached
    args = ["train", *TINY, f"data.source={small_corpus}", "callbacks=minimal", "logger=none"]
    args += ["trainer.limit_train_batches=10", "trainer.val_check_interval=1.0"]
    args += ["trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    first = run_cli([*args, "trainer.max_steps=3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _counts(saved_progress(last)) == (3, 0)
    more = run_cli([*args, "trainer.max_steps=6"], cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert "nothing to do" not in more.stderr
    assert _counts(saved_progress(last)) == (6, 0), "the same epoch, 6 of its batches"


def _counts(saved: SavedProgress) -> tuple[int, int]:
    return saved.step, saved.epochs


def test_a_validation_that_saves_no_top_k_checkpoint_still_moves_last_on(
    tmp_path: Path, small_corpus: Path
) -> None:
    # Lightning saves last only beside a top-k checkpoint (save_top_k=0 stands for a
    # validation that did not improve the monitored loss): a run killed at step 5 had none
    run_dir = tmp_path / "run"
    killed = run_cli(
        [
            "train",
            *TINY,
            f"data.source={small_corpus}",
            "callbacks=minimal",
            "logger=none",
            "callbacks.checkpoint.save_top_k=0",
            f"hydra.run.dir={run_dir}",
            "+callbacks.kill._target_=lightning_accel.callbacks.fault_injection.KillRank",
            "+callbacks.kill.point=training_step",
            "+callbacks.kill.step=3",
            "+callbacks.kill.rank=0",
        ],
        cwd=tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert saved_step(run_dir / "checkpoints" / "last.ckpt") == 2, "the validation at step 2"


def test_a_resumed_logger_drops_the_rows_logged_past_its_checkpoint_and_widens_its_header(
    tmp_path: Path,
) -> None:
    from lightning_accel.loggers import RunCSVLogger

    earlier = RunCSVLogger(tmp_path, name="", version="")
    for step in range(6):  # an attempt killed at step 6 after its checkpoint at step 4
        earlier.log_metrics({"train/loss": 10.0 - step}, step=step)
    earlier.save()
    with (tmp_path / "metrics.csv").open("a") as metrics:
        metrics.write("1")  # the start of a line a kill cut short: no whole step
    resumed = RunCSVLogger(tmp_path, name="", version="")
    resumed.continue_from(4)
    resumed.log_metrics({"train/loss": 5.5, "val/loss": 7.0}, step=4)
    resumed.save()
    with (tmp_path / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["train/loss"], row["val/loss"]) for row in rows] == [
        ("0", "10.0", ""),
        ("1", "9.0", ""),
        ("2", "8.0", ""),
        ("3", "7.0", ""),
        ("4", "5.5", "7.0"),
    ]
    fresh = RunCSVLogger(tmp_path, name="", version="")
    fresh.continue_from(0)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,train/loss,val/loss"]


@pytest.mark.parametrize("damage", [b"\xff\xfe not text\n", b"0," + b"9" * 200_000 + b"\n"])
def test_a_metrics_file_that_is_no_csv_text_is_kept_aside_and_logging_goes_on(
    tmp_path: Path, damage: bytes
) -> None:
    # a resumed run stopped with a UnicodeDecodeError (or csv's field limit) traceback
    from lightning_accel.loggers import RunCSVLogger

    earlier = RunCSVLogger(tmp_path, name="", version="")
    earlier.log_metrics({"train/loss": 1.0}, step=0)
    earlier.save()
    (tmp_path / "metrics.csv.damaged").write_text("an earlier one set aside\n")
    with (tmp_path / "metrics.csv").open("ab") as metrics:
        metrics.write(damage)
    damaged = (tmp_path / "metrics.csv").read_bytes()
    resumed = RunCSVLogger(tmp_path, name="", version="")
    with pytest.warns(UserWarning, match=r"metrics.csv is not a CSV file of metrics .* kept as"):
        resumed.log_hyperparams({"lr": 0.1})  # the writer reads the file it appends to
    resumed.continue_from(1)
    resumed.log_metrics({"train/loss": 0.5}, step=1)
    resumed.save()
    assert (tmp_path / "metrics.csv.damaged-2").read_bytes() == damaged, "kept as it was"
    assert (tmp_path / "metrics.csv.damaged").read_text() == "an earlier one set aside\n"
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,train/loss", "1,0.5"]


def _fit_logging(
    run_dir: Path, max_steps: int, ckpt_path: Path | None, callbacks: list[pl.Callback]
) -> list[int]:
    """Fit the logging regression into ``run_dir`` with a RunCSVLogger, logging every step
    and saving a checkpoint every 4; the steps of the rows its metrics.csv then holds."""
    from lightning_accel.loggers import RunCSVLogger

    saves = ModelCheckpoint(
        run_dir, "step-{step}", every_n_train_steps=4, save_top_k=-1, auto_insert_metric_name=False
    )
    trainer = quiet_trainer(
        max_steps=max_steps,
        log_every_n_steps=1,
        logger=RunCSVLogger(run_dir, name="", version=""),
        callbacks=[saves, *callbacks],
        enable_checkpointing=True,
    )
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, True)))
    trainer.fit(LoggingRegression(), data, ckpt_path=ckpt_path)
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("exact_resume", [True, False])
def test_a_drop_in_run_resumed_with_exact_resume_logs_each_step_once(
    tmp_path: Path, exact_resume: bool
) -> None:
    # an attempt that got to step 6 past its checkpoint at step 4 (killed, as far as the
    # checkpoint knows); Lightning gives a logger no word of where fit resumed
    callbacks = [ExactResume()] if exact_resume else []
    assert _fit_logging(tmp_path, 6, None, callbacks) == list(range(6))
    steps = _fit_logging(tmp_path, 8, tmp_path / "step-4.ckpt", callbacks)
    if exact_resume:
        assert steps == list(range(8))
    else:  # what the callback is for: steps 4 and 5 twice
        assert steps == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ((16, 32), "[16,32]"),
        ([1, [2, 3]], "[1,[2,3]]"),
        (True, "true"),
        (None, "null"),
        (0.5, "0.5"),
    ],
)
def test_saved_settings_are_named_as_overrides_write_them(value: object, written: str) -> None:
    from lightning_accel.cli.preflight import override_value

    assert override_value(value) == written
