"""The docs site: every schema field described in its docstring, the generated option
reference complete and true to the dataclasses, and a strict offline build."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_accel.cli.option_reference import (
    docstring_entries,
    field_default,
    header_description,
    is_section,
    options_page,
    schema_fields,
    undescribed_fields,
    yaml_value,
)
from lightning_accel.cli.schema import LAUNCHERS, STAGES, RunConfig
from lightning_accel.config import PRECISIONS, XLA_CHECKPOINTS
from lightning_accel.profiles import config_dir

ROOT = Path(__file__).resolve().parent.parent


def _row(page: str, key: str) -> str:
    """The option table row of ``key`` on the page."""
    rows = [
        line
        for line in page.splitlines()
        # an option table's row has five cells (the table of Trainer arguments has two)
        if line.startswith(f"| `{key}` |") and len(re.split(r"(?<!\\)\|", line)) >= 7
    ]
    assert len(rows) == 1, f"{key}: {len(rows)} rows"
    return rows[0]


def test_every_schema_field_is_described() -> None:
    assert undescribed_fields() == []
    described_classes = {owner for _, owner, _ in schema_fields()}
    for owner in described_classes:
        names = {item.name for item in dataclasses.fields(owner)}
        stray = set(docstring_entries(owner.__doc__, "Attributes")) - names
        assert not stray, f"{owner.__name__} describes fields it does not have: {stray}"


def test_a_field_without_a_description_is_found() -> None:
    @dataclasses.dataclass
    class Inner:
        """Inner.

        Attributes:
            size: described.
        """

        size: int = 1
        depth: int = 2

    @dataclasses.dataclass
    class Outer:
        """Outer.

        Attributes:
            inner: described, over
                two lines.
        """

        inner: Inner = dataclasses.field(default_factory=Inner)
        name: str = "x"

    assert undescribed_fields(Outer) == ["inner.depth", "name"]
    assert docstring_entries(Outer.__doc__, "Attributes") == {"inner": "described, over two lines."}


def test_option_reference_lists_every_key_with_its_type_and_default() -> None:
    page = options_page()
    for key, owner, item in schema_fields():
        if is_section(item):
            assert f"## `{key}`" in page
            assert f"`{type(field_default(item)).__name__}`" in page
            continue
        row = _row(page, key)
        assert f"| `{item.type}` |" in row, row
        assert f"| `{yaml_value(field_default(item))}` |" in row, row
        assert docstring_entries(owner.__doc__, "Attributes")[item.name] in row, row
    for key, choices in {
        "stage": STAGES,
        "launcher.name": LAUNCHERS,
        "optimization.precision": PRECISIONS,
        "hardware.strategy_options.checkpoint": XLA_CHECKPOINTS,
    }.items():
        row = _row(page, key)
        assert all(f"`{yaml_value(choice)}`" in row for choice in choices), row
    assert "#### Strategy `accel_ddp`" in page and "#### Strategy `fsdp2`" in page
    assert "`hardware.strategy_options.timeout_s`" in page
    assert "`launcher.run_id`" in page and RunConfig.__name__ in page


def test_option_reference_lists_every_config_group_option() -> None:
    page = options_page()
    groups = sorted(p for p in config_dir().iterdir() if p.is_dir())
    assert groups
    for group in groups:
        section = page.split(f"### Group `{group.name}`", 1)[1].split("\n### ", 1)[0]
        for path in sorted(group.glob("*.yaml")):
            assert f"| `{path.stem}`" in section, f"{group.name}/{path.name}"
            assert header_description(path) in section
    assert "| `gpt` (*default*) |" in page


def test_yaml_values_and_header_descriptions(tmp_path: Path) -> None:
    assert [yaml_value(v) for v in (None, True, "", 1.0, (), {"a": 1})] == [
        "null",
        "true",
        '""',
        "1.0",
        "[]",
        "{a: 1}",
    ]
    config = tmp_path / "x.yaml"
    config.write_text(
        "# @package _global_\n# Says what it is,\n# over two lines:\n#   run it\nkey: 1\n"
    )
    assert header_description(config) == "Says what it is, over two lines."


@pytest.mark.slow
def test_docs_site_builds_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        # any attempt to reach the network fails
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    options = (site / "options" / "index.html").read_text()
    assert "hardware.strategy_options.timeout_s" in options
    schema = (site / "reference" / "lightning_accel.cli.schema" / "index.html").read_text()
    assert "RunConfig" in schema and "rdzv_endpoint" in schema
    # modules that import torch_xla are documented from their source, without importing it
    spmd = (site / "reference" / "lightning_accel.xla.spmd" / "index.html").read_text()
    assert "XLASPMDStrategy" in spmd
    assert (site / "launchers" / "index.html").is_file()
    # the reference's navigation is read into the site's, not built as a page of its own
    assert not (site / "reference" / "SUMMARY").exists()
    assert 'href="reference/lightning_accel.cli.schema/"' in (site / "index.html").read_text()
    assert (site / "precision" / "index.html").is_file()
