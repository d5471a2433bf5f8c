"""What the CLI prints off a terminal (a log, a pipe): tables whose cells are shown whole."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from helpers import run_cli
from rich.console import Console
from rich.table import Table

from lightning_accel.cli.console import print_table


def _log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=80, highlight=False), out


def test_a_table_of_figures_is_printed_whole_where_rich_would_cut_it_at_80_columns() -> None:
    figures = [f"{1000.0 * (i + 1):,.1f} MiB" for i in range(10)]
    table = Table()
    for i in range(len(figures)):
        table.add_column(f"figure {i}", justify="right")
    table.add_row(*figures)
    cut, cut_out = _log_console()
    cut.print(table)
    assert "…" in cut_out.getvalue(), "the case print_table is for: rich cuts the cells"
    target, out = _log_console()
    print_table(table, target)
    assert "…" not in out.getvalue() and all(figure in out.getvalue() for figure in figures)


def test_a_table_of_figures_wider_than_200_columns_stops_at_200() -> None:
    table = Table()
    for i in range(40):
        table.add_column(f"figure {i}")
    table.add_row(*(f"{i:,}" for i in range(40)))
    target, out = _log_console()
    print_table(table, target)
    assert max(len(line) for line in out.getvalue().splitlines()) == 200


def test_the_plan_table_in_a_log_names_every_layout_and_figure_whole(tmp_path: Path) -> None:
    result = run_cli(["plan", "--world", "1,2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stderr.splitlines() if " MiB " in line]
    assert {line.split()[1] for line in rows} == {"single", "ddp", "fsdp2", "tp"}
    assert not any("…" in line for line in rows), result.stderr


def test_evaluation_metrics_keep_their_checkpoint_title_on_one_line(
    capsys: pytest.CaptureFixture,
) -> None:
    from lightning_accel.cli.runner import print_metrics

    title = "validate: /a/long/run/directory/of/some/project/checkpoints/step-1000.ckpt"
    print_metrics(title, {"val/loss": 0.5, "val/accuracy": 0.9})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == title
    assert any("val/accuracy" in line and "0.9000" in line for line in lines)
