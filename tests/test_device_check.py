"""``lightning-accel verify`` and scripts/device_check.sh: the dry run on the CPU twins end
to end (every cell run, passed and measured), the refusal without CUDA, a deadline that
leaves cells not run, results written as each cell ends, a collective that hangs
failing the cells that need it at once, ``--only`` choosing cells with those they need, and
output directories that cannot be made refused before any cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from lightning_accel.cli import verify
from lightning_accel.cli.verify import (
    COLLECTIVES,
    DRY_RUN,
    OFFLOAD,
    Cell,
    CheckFailed,
    Verification,
    cells_for,
    collectives,
    gpu_setting,
    run_cells,
    selected_cells,
)
from lightning_accel.errors import ConfigError

pytestmark = pytest.mark.slow

# the cells of a dry run on a checkout with every optimization profile
CELLS = [cell.name for cell in cells_for(DRY_RUN, ["default", "fast", "memory", "auto"])]
TRAINED = [
    name
    for name in CELLS
    if not name.startswith(("precision rules", "checkpoint · consolidate", "plain loop"))
    and name not in ("precision · 16-mixed", COLLECTIVES)
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One dry run of every cell, and the directory it wrote its results to."""
    root = tmp_path_factory.mktemp("verify")
    out = root / "results"
    args = ["verify", "--dry-run", "--out", str(out), "--work", str(root / "work")]
    return run_cli(args, cwd=REPO, timeout=300), out


def test_dry_run_passes_every_cell_and_records_its_figures(
    dry_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    result, out = dry_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["cpu-dry-run.json", "cpu-dry-run.md"]
    record = json.loads((out / "cpu-dry-run.json").read_text())
    assert record["dry_run"] is True and record["torch"] and record["machine"]
    cells = {cell["name"]: cell for cell in record["cells"]}
    assert list(cells) == CELLS
    assert all(c["status"] == "passed" and c["error"] is None for c in cells.values()), [
        (c["name"], c["error"]) for c in cells.values() if c["error"]
    ]
    for name in TRAINED:
        figures = cells[name]["figures"]
        assert figures["steps"] >= DRY_RUN.steps, name
        assert figures["steps_per_second"] > 0 and figures["samples_per_second"] > 0, name
        assert figures["device"] == "cpu", name
        # a CPU's peak is measured, so every run has an MFU
        assert figures["peak_flops_source"].startswith("measured"), name
        assert 0 < figures["mfu"] < 1, name
        assert cells[name]["seconds"] > 0 and cells[name]["run_dir"], name
    probe = cells[COLLECTIVES]["figures"]
    assert probe["backend"] == "gloo" and probe["value"] == verify.PROBE_VALUE
    assert cells["auto · default"]["figures"]["precision"] == "32-true"
    assert cells["auto · default"]["figures"]["tokens_per_second"] > 0
    assert cells["fsdp2 · cpu offload"]["figures"]["parameters_on"] == ["cpu"]
    assert cells["image · channels_last"]["figures"]["channels_last"] is True
    parity = cells["ddp · 2 devices"]["figures"]
    assert parity["world_size"] == 2 and parity["compared_steps"] == DRY_RUN.steps
    assert parity["max_loss_difference"] < 1e-5, "DDP on two ranks follows one process in fp32"
    assert "cannot run on cpu" in cells["precision · 16-mixed"]["figures"]["refusal"]
    rules = cells["precision rules"]["figures"]
    assert rules["sm80 auto"] == "bf16-mixed" and rules["sm75 auto"] == "16-mixed"
    assert rules["refusals"] == 3
    assert cells["checkpoint · resume"]["figures"]["steps"] == DRY_RUN.steps + 2
    assert cells["checkpoint · consolidate"]["figures"]["global_step"] == DRY_RUN.steps
    float8 = cells["optimization=fp8"]["figures"]
    assert float8["float8_layers"] == 4 * DRY_RUN.model["n_layer"], "4 Linear layers a block"
    assert float8["fp8_over_bf16"] > 0 and float8["precision"] == "bf16-mixed"
    assert cells["fp8 · float8 off"]["figures"]["precision"] == "bf16-mixed"
    assert cells["fp8 · auto"]["figures"]["fp8_choice"].startswith(
        "float8 needs a GPU with float8 tensor cores"
    ), "the CPU twin: off without a trial"
    plain_loops = {
        "plain loop · fp32": "auto · default",
        "plain loop · bf16": "precision · bf16-mixed",
        "plain loop · bf16 compiled": "optimization=fast · compiled",
    }
    for name, runner_cell in plain_loops.items():
        plain = cells[name]["figures"]
        assert plain["tokens_per_second"] > 0 and plain["pack_over_plain"] > 0, name
        assert 0 < plain["mfu"] < 1, name
        assert plain["runner_cell"] == runner_cell
        assert plain["compiled"] is name.endswith("compiled")


def test_dry_run_writes_a_markdown_table_and_prints_it(
    dry_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    result, out = dry_run
    page = (out / "cpu-dry-run.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(CELLS), "a header and one row per cell"
    assert f"{len(CELLS)} of {len(CELLS)} cells passed" in page
    assert all("| passed |" in row for row in rows[1:])
    assert "cpu-dry-run.json" in result.stderr.replace("\n", "")


def test_without_cuda_and_without_dry_run_exits_2_with_one_sentence(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "device_check.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "no CUDA GPU" in lines[0] and "--dry-run" in lines[0]
    assert not out.exists(), "nothing written"


def test_past_the_deadline_no_cell_starts_and_the_rest_are_recorded_as_not_run(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    args = ["verify", "--dry-run", "--deadline", "1", "--out", str(out)]
    result = run_cli([*args, "--work", str(tmp_path / "work")], cwd=REPO, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    record = json.loads((out / "cpu-dry-run.json").read_text())
    statuses = [cell["status"] for cell in record["cells"]]
    assert statuses.count("not run") == record["not_run"] >= len(CELLS) - 2, statuses
    assert statuses[-1] == "not run" and record["cells"][-1]["seconds"] == 0
    assert "not run, past the deadline" in result.stderr.replace("\n", " ")
    assert "| not run |" in (out / "cpu-dry-run.md").read_text()


def test_the_results_are_written_as_each_cell_ends(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    cells = [Cell(name, "nothing", lambda v, c: {}) for name in ("first", "second")]
    verification = Verification(DRY_RUN, tmp_path)
    run_cells(verification, cells, cell_ended=lambda: seen.append([c.status for c in cells]))
    assert seen == [["passed", "not run"], ["passed", "passed"]]


def test_a_collective_that_hangs_fails_at_once_with_the_cells_that_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "PROBE_TIMEOUT", 0.001)  # no process starts that fast
    trained: list[str] = []
    cells = [
        Cell(COLLECTIVES, "an all-reduce", collectives),
        Cell("ddp · 1 device", "DDP", lambda v, c: trained.append(c.name) or {}, (COLLECTIVES,)),
    ]
    run_cells(Verification(DRY_RUN, tmp_path), cells)
    assert [c.status for c in cells] == ["failed", "failed"]
    assert cells[0].error == "a one-rank gloo all-reduce did not end in 0.001 s"
    assert cells[1].error == f"needs {COLLECTIVES}, which failed" and not trained


class RecordedRun(Verification):
    """A verification whose runs record their overrides instead of training."""

    overrides: list[str]

    def train(self, cell: Cell, overrides: list[str]) -> dict:
        self.overrides = overrides
        raise CheckFailed("recorded")


def test_on_several_gpus_every_parallel_layout_follows_one_gpu(tmp_path: Path) -> None:
    cells = {cell.name: cell for cell in cells_for(gpu_setting(4), ["default"])}
    parity = [name for name in cells if name.endswith("· 4 devices")]
    assert parity == ["ddp · 4 devices", "fsdp2 · 4 devices", "fsdp2 offload · 4 devices"]
    assert all(cells[name].needs == (COLLECTIVES, "auto · default") for name in parity)
    offload = cells["fsdp2 offload · 4 devices"]
    verification = RecordedRun(gpu_setting(4), tmp_path)
    with pytest.raises(CheckFailed):
        offload.run(verification, offload)
    assert {"hardware=fsdp2", "hardware.devices=4", OFFLOAD} <= set(verification.overrides)


def test_only_runs_the_named_cells_and_the_cells_they_need() -> None:
    cells = cells_for(DRY_RUN, ["default", "fast"])
    chosen = [cell.name for cell in selected_cells(cells, "PLAIN LOOP · bf16, fp8")]
    expected = ["precision · bf16-mixed", "fp8 · float8 off", "optimization=fp8"]
    loops = ["plain loop · bf16", "optimization=fast · compiled", "plain loop · bf16 compiled"]
    assert chosen == [*expected, *loops, "fp8 · auto"], "in their order, needs included"
    resume = [cell.name for cell in selected_cells(cells, "resume")]
    assert resume == [COLLECTIVES, "fsdp2 · 1 device", "checkpoint · resume"], "needs of needs"
    for nothing in ("", " , "):  # an empty selection would run nothing and record it
        with pytest.raises(ConfigError, match="names no cell; give one or more"):
            selected_cells(cells, nothing)


def test_only_with_a_word_no_cell_has_exits_2_naming_the_cells(tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["verify", "--dry-run", "--only", "nosuch", "--out", str(out)]
    result = run_cli([*args, "--work", str(tmp_path / "work")], cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "--only='nosuch' names no cell; valid choices: collectives," in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "work").exists(), "nothing written"


@pytest.mark.parametrize("option", ["--out", "--work"])
def test_a_directory_that_cannot_be_made_exits_2_before_any_cell(
    tmp_path: Path, option: str
) -> None:
    (tmp_path / "FILE").write_text("a file where a directory is expected")
    directories = {"--out": tmp_path / "results", "--work": tmp_path / "work"}
    directories[option] = tmp_path / "FILE" / "results"
    args = ["verify", "--dry-run", *(a for o, d in directories.items() for a in (o, str(d)))]
    result = run_cli(args, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"{option}='{directories[option]}' cannot be created because" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"], "nothing written"
