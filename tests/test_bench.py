"""``lightning-accel bench``: a matrix of runs in their own processes, compared in a table,
CSV, JSON and a chart; a failed cell is reported and the others still run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import TEST_IMPORTS, TINY, run_cli, wait_until_exited

from lightning_accel.cli import bench
from lightning_accel.cli.compose import job_overrides

# the smoke trainer's 4 steps, 2 of them timed after the speed monitor's warm-up
TIMED = [*TINY, "callbacks.speed.warmup_steps=2"]


def test_a_failed_cell_is_reported_and_the_others_still_run(
    tmp_path: Path, small_corpus: Path
) -> None:
    out = tmp_path / "bench, one"  # a comma and a space: quoted in the cells' overrides
    args = ["bench", "--out", str(out), *TIMED, f"data.source={small_corpus}"]
    # an interval past the epoch is found only once the data is loaded, in the cell's run
    args += ["trainer.val_check_interval=100000,2"]
    result = run_cli(args, cwd=tmp_path)

    assert result.returncode == 1, "a failed cell makes the command fail"
    assert "100000 failed: trainer.val_check_interval=100000 is more than" in result.stderr
    document = json.loads((out / "results.json").read_text())
    failed, ok = document["cells"]
    assert (failed["cell"], failed["status"], failed["speedup"]) == ("100000", "failed", None)
    assert failed["error"].startswith("trainer.val_check_interval=100000 is more than the")
    assert (ok["cell"], ok["status"], ok["error"]) == ("2", "ok", None)
    cpu = ok
    summary = json.loads((out / "1-2" / "summary.json").read_text())
    assert cpu["samples_per_second"] == summary["samples_per_second"] > 0
    assert cpu["step_seconds"] == summary["step_seconds"] > 0
    assert cpu["optimizer_step_seconds"] == summary["optimizer_step_seconds"] > 0
    assert cpu["peak_memory_mb"] == max(summary["peak_memory_mb_per_rank"])
    assert 0 < cpu["mfu"] < 1
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["cell"], r["status"]) for r in rows] == [("100000", "failed"), ("2", "ok")]
    assert float(rows[1]["samples_per_second"]) == cpu["samples_per_second"]
    assert (out / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("hardware=", "hardware='' lists no values, so the matrix is empty; give one or more;"),
        ("hardware=cpu,cpu", "hardware='cpu,cpu' lists cpu more than once; give each value"),
        ("hardware=cpu,nope", "hardware='nope' is not a hardware option; valid choices: auto,"),
        (
            "optimization=fast,quick",
            "'quick' is not an optimization option; valid choices: auto, default",
        ),
        ("hardware=cpu,xla_cpu", "hardware.accelerator='pjrt' needs torch_xla"),
        (
            "trainer.max_steps=5",
            "trainer.max_steps=5 leaves no step to time after the speed monitor's 5 warm-up",
        ),
        ("hydra.run.dir=mine", "hydra.run.dir='mine' is set by bench: each cell runs in a"),
        ("ckpt_path=missing.ckpt", "ckpt_path='missing.ckpt' is not a checkpoint file or"),
        ("model.n_head=3", "model.n_head=3 does not divide model.d_model=128."),
    ],
)
def test_an_empty_matrix_unknown_profile_or_untimed_run_exits_2_before_running(
    tmp_path: Path, override: str, expected: str
) -> None:
    out = tmp_path / "bench"
    result = run_cli(["bench", "--out", str(out), override], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "nothing ran and nothing was written"


def test_an_option_given_twice_exits_2_naming_both_values(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--repeats", "3", "--out", str(out), "--repeats", "1", "hardware=cpu"]
    result = run_cli(args, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "lightning-accel: error: --repeats=1 repeats --repeats (given 3 first); give it once."
    ]
    assert not out.exists(), "nothing ran and nothing was written"


def test_an_out_directory_that_cannot_be_made_exits_2_before_running(tmp_path: Path) -> None:
    (tmp_path / "FILE").write_text("a file where a directory is expected")
    out = tmp_path / "FILE" / "bench"
    result = run_cli(["bench", "--out", str(out), "hardware=cpu"], cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert f"--out='{out}' cannot be created because {tmp_path / 'FILE'} is not a" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"], "nothing ran"


def _cell(label: str, samples: float | None, **figures: float) -> bench.Cell:
    cell = bench.Cell(label=label, overrides=[f"hardware={label}"])
    if samples is None:
        cell.error = "boom"
    else:
        cell.figures = {name: None for name in bench.FIGURES}
        cell.figures.update(samples_per_second=samples, **figures)
    return cell


def test_speedups_are_against_the_first_cell() -> None:
    cells = [_cell("a", 100.0), _cell("b", 250.0), _cell("c", None)]
    assert bench.speedups(cells) == [1.0, 2.5, None]
    assert bench.speedups([_cell("a", None), _cell("b", 250.0)]) == [None, None]


def test_the_table_shows_labels_and_errors_with_brackets_as_given() -> None:
    """Rich read "[xla*]" in a glob's exclusions as markup and left it out."""
    from rich.console import Console

    title = "bench: hardware=glob(*_cpu,exclude=[xla*,tp*])"
    cells = [_cell("a", 100.0), _cell("b", None)]
    cells[0].label, cells[1].label = "model.widths=[a,b]", "model.widths=[c]"
    console = Console(record=True, width=200)
    console.print(bench.results_table(cells, title, "cell"))
    shown = console.export_text()
    for text in (title, "model.widths=[a,b]", "model.widths=[c]"):
        assert text in shown


def test_repeated_runs_give_medians_and_compile_counts_prefer_xla() -> None:
    runs = [bench.cell_figures({"step_seconds": s, "samples_per_second": 1 / s}) for s in (3, 1, 2)]
    medians = bench.median_figures(runs)
    assert medians["step_seconds"] == 2 and medians["samples_per_second"] == 0.5
    assert medians["mfu"] is None
    # two runs: the slower one's figures, not a mean step time beside a mean throughput
    two = bench.median_figures(runs[1:])
    assert two["step_seconds"] == 2 and two["samples_per_second"] == 0.5
    figures = bench.cell_figures(
        {"xla_compilations": 19, "compiled_graphs": 0, "peak_memory_mb_per_rank": [5.0, 7.0]}
    )
    assert figures["compilations"] == 19 and figures["peak_memory_mb"] == 7.0


def test_a_cell_past_its_timeout_is_stopped_with_its_processes_and_the_others_go_on(
    tmp_path: Path, small_corpus: Path
) -> None:
    out, pids = tmp_path / "bench", tmp_path / "pids"
    pids.mkdir()
    args = [
        "bench", "--out", str(out), "--cell-timeout", "30", *TIMED, f"data.source={small_corpus}",
        "+callbacks.hang._target_=helpers.HangAtStart", "+callbacks.hang.seconds=600,0",
        f"+callbacks.hang.pid_dir={pids}",
    ]  # fmt: skip
    result = run_cli(args, cwd=tmp_path, timeout=200, env=TEST_IMPORTS)
    assert result.returncode == 1
    assert "600 timed out: timed out after 30 s and was stopped" in result.stderr
    hung, finished = json.loads((out / "results.json").read_text())["cells"]
    assert (hung["cell"], hung["status"], hung["samples_per_second"]) == ("600", "timed out", None)
    assert (finished["cell"], finished["status"]) == ("0", "ok")
    assert finished["samples_per_second"] > 0
    cells = [int(p.name) for p in pids.iterdir()]
    assert len(cells) == 2
    for pid in cells:  # no cell process is left
        wait_until_exited(pid, timeout=5)


def test_sweeps_written_as_range_choice_or_lists_are_labelled_by_what_varies() -> None:
    overrides = ["seed=range(1,3)", "trainer.max_steps=choice(5,6)", "+data.sizes=[1,2]"]
    jobs = job_overrides(overrides, multirun=True)
    assert bench.swept_keys(jobs) == ["seed", "trainer.max_steps"]
    assert bench.swept_keys(job_overrides(["seed=range(3)"], multirun=True)) == ["seed"]
    assert bench.swept_keys(job_overrides(["+data.sizes=[1,2]"], multirun=True)) == []


def test_a_cell_stopped_by_ctrl_c_leaves_its_output_merged_into_bench_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InterruptedServer:
        def run(self, args, cwd, environment, stdout: Path, stderr: Path, timeout) -> int:
            stdout.write_text("training\n")
            stderr.write_text("half a line")
            raise KeyboardInterrupt

    from lightning_accel.cli import command_server

    monkeypatch.setattr(command_server.CommandServer, "shared", InterruptedServer)
    with pytest.raises(KeyboardInterrupt):
        bench.run_cell(bench.Cell("default", []), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.log"]
    assert (tmp_path / "bench.log").read_text() == "training\nhalf a line"


def test_a_bench_stopped_by_ctrl_c_keeps_the_figures_of_the_cells_it_finished(
    tmp_path: Path,
    small_corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Ctrl+C lost every cell's figures: nothing was written."""

    def run_cell(cell: bench.Cell, run_dir: Path, timeout: float | None) -> dict | None:
        if cell.label != "3":
            raise KeyboardInterrupt
        return {"step_seconds": 0.5, "samples_per_second": 16.0}

    monkeypatch.setattr(bench, "run_cell", run_cell)
    out = tmp_path / "out"
    args = ["--out", str(out), *TIMED, f"data.source={small_corpus}"]
    with pytest.raises(SystemExit) as stopped:
        bench.main([*args, "trainer.max_steps=3,4,5", "--repeats", "2"])
    assert stopped.value.code == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("lightning-accel: stopped on SIGINT (Ctrl+C) with 0 of 3 cells")
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [(c["cell"], c["status"]) for c in cells] == [
        ("3", "stopped"),
        ("4", "stopped"),
        ("5", "stopped"),
    ]
    assert cells[0]["error"] == "stopped by Ctrl+C, 1 of its 2 runs done"
    assert cells[0]["step_seconds"] is None, "no median of fewer runs than asked"

    monkeypatch.setattr(bench, "run_cell", lambda cell, *rest: run_cell(cell, *rest))
    with pytest.raises(SystemExit):
        bench.main([*args, "trainer.max_steps=3,4,5"])
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["ok", "stopped", "stopped"]
    assert cells[0]["step_seconds"] == 0.5 and cells[1]["error"] == "stopped by Ctrl+C"
