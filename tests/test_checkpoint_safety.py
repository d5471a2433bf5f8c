"""Checkpoints are data: a file crafted to run code when unpickled is refused, naming it,
and its payload never runs (single files, the pack's Trainer, automatic resume); a file
that is no checkpoint at all is refused in a sentence too."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TinyRegression, write_crafted_checkpoint

from lightning_accel import build_trainer
from lightning_accel.checkpoints import (
    AtomicCheckpointIO,
    optimizer_by_index,
    optimizer_by_name,
    sharded_entries,
)
from lightning_accel.cli.main import main
from lightning_accel.errors import ConfigError
from lightning_accel.safe_load import read_dcp_metadata


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A crafted checkpoint file and the file its payload would create."""
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "evil.ckpt"
    write_crafted_checkpoint(checkpoint, marker)
    return checkpoint, marker


def test_the_crafted_file_really_runs_code_when_loaded_without_weights_only(
    crafted: tuple[Path, Path],
) -> None:
    checkpoint, marker = crafted
    torch.load(checkpoint, weights_only=False)
    assert marker.exists(), "the payload must be live for the refusals below to mean anything"


def _refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one line the CLI prints on stderr when it refuses ``args`` with exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_train_refuses_a_crafted_checkpoint_with_exit_2_naming_the_file(
    crafted: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint, marker = crafted
    monkeypatch.chdir(tmp_path)
    err = _refused(["train", "logger=none", f"ckpt_path={checkpoint}"], capsys)
    assert f"ckpt_path='{checkpoint}' would run code when loaded" in err
    assert "posix.system" in err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"], "no run directory"


def _torch_save_cut_in_half(path: Path) -> None:
    torch.save({"state_dict": {"weight": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zip_of_other_files(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


FOREIGN_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "empty file": (lambda path: path.write_bytes(b""), "is an empty file, not a checkpoint."),
    "text": (lambda path: path.write_text("epoch: 3\n"), "torch.save wrote (IndexError: "),
    "plain pickle": (
        lambda path: path.write_bytes(pickle.dumps({"epoch": 3}, protocol=4)),
        "an instruction torch's safe loader does not read: Unsupported operand 149)",
    ),
    "zip of other files": (_zip_of_other_files, "(RuntimeError: file in archive is not in a"),
    "torch.save cut in half": (_torch_save_cut_in_half, "failed reading zip archive"),
}


@pytest.mark.parametrize("kind", list(FOREIGN_FILES))
def test_a_file_that_is_no_checkpoint_exits_2_in_one_sentence(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write, expected = FOREIGN_FILES[kind]
    checkpoint = tmp_path / "model.ckpt"
    write(checkpoint)
    monkeypatch.chdir(tmp_path)
    err = _refused(["validate", f"ckpt_path={checkpoint}"], capsys)
    assert err.startswith(f"lightning-accel: error: ckpt_path='{checkpoint}' ") and expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"], "no run directory"


def test_automatic_resume_refuses_a_crafted_last_checkpoint_in_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "payload-ran"
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    write_crafted_checkpoint(checkpoints / "last.ckpt", marker)
    monkeypatch.chdir(tmp_path)
    err = _refused(["train", "logger=none", "hydra.run.dir=run"], capsys)
    assert "last.ckpt' would run code when loaded" in err
    assert not marker.exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("damage", ["truncated file", "sharded without its index"])
def test_a_damaged_last_checkpoint_in_the_run_directory_is_refused_not_trained_over(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the run started afresh from step 0 without a word, overwriting its files
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"global_step": 10, "state_dict": {}}, checkpoints / "step-10.ckpt")
    last = checkpoints / "last.ckpt"
    if damage == "truncated file":
        last.write_bytes((checkpoints / "step-10.ckpt").read_bytes()[:200])
    else:
        last.mkdir()
        (last / "__0_0.distcp").write_bytes(b"shard")
    (tmp_path / "run" / "metrics.csv").write_text("step,train/loss\n9,1.5\n")
    monkeypatch.chdir(tmp_path)
    err = _refused(["train", "logger=csv", "hydra.run.dir=run"], capsys)
    assert "the run directory's last checkpoint=" in err
    assert "ckpt_path=run/checkpoints/step-10.ckpt, or give a new hydra.run.dir" in err
    assert (tmp_path / "run" / "metrics.csv").read_text() == "step,train/loss\n9,1.5\n"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step-10.ckpt"]


def test_the_packs_trainer_refuses_a_crafted_checkpoint_in_drop_in_use(
    crafted: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint, marker = crafted
    trainer = build_trainer(
        "cpu", max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(4, 8), torch.randn(4, 1)), batch_size=2
    )
    with pytest.raises(ConfigError, match="would run code when loaded"):
        trainer.fit(TinyRegression(), train_dataloaders=data, ckpt_path=checkpoint)
    assert not marker.exists()


def test_a_crafted_sharded_index_is_refused_before_it_is_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    write_crafted_checkpoint(tmp_path / ".metadata", marker, plain_pickle=True)
    with pytest.raises(ConfigError, match=r"\.metadata' would run code .* posix\.system"):
        read_dcp_metadata(tmp_path)
    assert not marker.exists()
    pickle.loads((tmp_path / ".metadata").read_bytes())
    assert marker.exists(), "the index's payload is live"


def test_optimizer_states_keyed_by_name_come_back_by_position() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(0.01))
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    names = {id(p): name for name, p in model.named_parameters()}
    by_name = optimizer_by_name(optimizer.state_dict(), optimizer, names)
    assert list(by_name["state"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert by_name["param_groups"][0]["lr"] == pytest.approx(0.01)
    back = optimizer_by_index(by_name)
    assert list(back["state"]) == [0, 1, 2, 3]
    assert torch.equal(back["state"][2]["exp_avg"], optimizer.state_dict()["state"][2]["exp_avg"])
    checkpoint = {"state_dict": {}, "optimizer_states": [by_name], "global_step": 1}
    shards = sharded_entries(checkpoint)
    assert list(shards) == ["state_dict", "optimizer_0"] and checkpoint == {"global_step": 1}


def test_a_directory_of_checkpoints_names_the_one_to_give(tmp_path: Path) -> None:
    from lightning_accel.checkpoints import verify_checkpoint
    from lightning_accel.errors import ConfigError

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("step-4.ckpt", "last.ckpt"):
        torch.save({"global_step": 4}, folder / name)
    with pytest.raises(ConfigError) as error:
        verify_checkpoint(folder)
    assert str(error.value) == (
        f"ckpt_path='{folder}' is a directory of checkpoints; give one of them, such as "
        f"{folder / 'last.ckpt'}."
    )
    (folder / "last.ckpt").unlink()
    with pytest.raises(ConfigError, match=r"such as .*step-4\.ckpt\.$"):
        verify_checkpoint(folder)


def test_omegaconf_hyper_parameters_are_named_with_the_way_to_resave_them(
    tmp_path: Path,
) -> None:
    from omegaconf import OmegaConf

    from lightning_accel.checkpoints import verify_checkpoint
    from lightning_accel.errors import ConfigError

    old = tmp_path / "old.ckpt"
    hyper_parameters = {"widths": OmegaConf.create([16, 32])}
    torch.save({"state_dict": {}, "hyper_parameters": hyper_parameters}, old)
    with pytest.raises(ConfigError) as error:
        verify_checkpoint(old)
    assert str(error.value).startswith(
        f"ckpt_path='{old}' holds OmegaConf objects (omegaconf.listconfig.ListConfig), which "
        "the pack does not unpickle"
    )
    # the re-save docs/checkpoints.md gives, on a file the user trusts
    checkpoint = torch.load(old, weights_only=False)
    checkpoint["hyper_parameters"] = OmegaConf.to_container(
        OmegaConf.create(dict(checkpoint["hyper_parameters"]))
    )
    torch.save(checkpoint, tmp_path / "plain.ckpt")
    verify_checkpoint(tmp_path / "plain.ckpt")
    plain = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert plain["hyper_parameters"] == {"widths": [16, 32]}


def test_a_run_keeping_no_last_checkpoint_resumes_from_its_furthest_one(tmp_path: Path) -> None:
    """With save_last off, a stop on SIGTERM still saves last.ckpt and names the command
    that resumes from it, but the repeated command started afresh from step 0."""
    from helpers import composed_run

    from lightning_accel.cli.runner import own_last_checkpoint

    run = composed_run(tmp_path / "run", ["callbacks.checkpoint.save_last=false"])
    directory = tmp_path / "run" / "checkpoints"
    directory.mkdir(parents=True)
    assert own_last_checkpoint(run) is None
    for name, step in (("step-50.ckpt", 50), ("last.ckpt", 70)):  # last: the stop's save
        torch.save({"global_step": step, "state_dict": {}}, directory / name)
    assert own_last_checkpoint(run) == directory / "last.ckpt"
    torch.save({"global_step": 90, "state_dict": {}}, directory / "step-90.ckpt")
    assert own_last_checkpoint(run) == directory / "step-90.ckpt", "the furthest, not the name"
    keeping = composed_run(tmp_path / "run", [])
    assert own_last_checkpoint(keeping) == directory / "last.ckpt", "save_last: its last"
