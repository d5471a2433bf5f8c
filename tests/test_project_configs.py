"""A project's own config groups (``--config-dir``, as Hydra's): its recipe and hardware
profile train, plan and bench like the pack's own, and a directory that is not there is
refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import run_cli

RECIPE = """\
# @package _global_
defaults:
  - gpt
  - _self_
recipe: tiny
model: {n_layer: 1, d_model: 32, n_head: 2}
data: {seq_len: 32, batch_size: 4}
"""

HARDWARE = """\
defaults:
  - cpu
  - _self_
name: laptop
"""


@pytest.fixture
def project(tmp_path: Path, small_corpus: Path) -> Path:
    """A project directory holding conf/recipe/tiny.yaml and conf/hardware/laptop.yaml."""
    (tmp_path / "conf" / "recipe").mkdir(parents=True)
    (tmp_path / "conf" / "hardware").mkdir()
    (tmp_path / "conf" / "recipe" / "tiny.yaml").write_text(
        RECIPE.replace("data: {", f"data: {{source: {small_corpus}, ")
    )
    (tmp_path / "conf" / "hardware" / "laptop.yaml").write_text(HARDWARE)
    return tmp_path


def test_a_projects_recipe_and_hardware_profile_train_plan_and_bench(project: Path) -> None:
    trained = run_cli(
        ["train", "--config-dir", "conf", "recipe=tiny", "hardware=laptop", "trainer=smoke"],
        cwd=project,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (project / "runs" / "tiny").iterdir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["hardware"]["name"] == "laptop" and config["model"]["n_layer"] == 1
    assert json.loads((run_dir / "summary.json").read_text())["steps"] > 0

    planned = run_cli(["plan", "--config-dir", "conf", "recipe=tiny", "--json"], cwd=project)
    assert planned.returncode == 0, planned.stderr[-3000:]
    tiny_parameters = json.loads(planned.stdout)["parameters"]
    default = run_cli(["plan", "--json"], cwd=project)
    assert 0 < tiny_parameters < json.loads(default.stdout)["parameters"]

    helped = run_cli(["train", "--help", "--config-dir", "conf", "recipe=tiny"], cwd=project)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "tiny" in helped.stdout, "the project's recipe is listed"

    refused = run_cli(["bench", "-cd", "conf", "recipe=tiny", "hardware=laptop,nope"], cwd=project)
    assert refused.returncode == 2
    assert "hardware='nope' is not a hardware option; valid choices: " in refused.stderr
    assert ", laptop, " in refused.stderr, "the project's profile is a choice"


@pytest.mark.parametrize("verb", ["train", "plan", "bench", "doctor"])
def test_a_config_dir_that_is_not_there_exits_2_in_one_sentence(verb: str, tmp_path: Path) -> None:
    result = run_cli([verb, "--config-dir", "conf", "hardware=cpu"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lightning-accel: error: --config-dir='conf' is not a directory; give the one that "
        "holds your config groups, such as conf with conf/recipe/NAME.yaml."
    ]
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("verb", ["train", "doctor"])
def test_a_project_option_named_as_one_of_the_packs_exits_2(verb: str, tmp_path: Path) -> None:
    (tmp_path / "conf" / "hardware").mkdir(parents=True)
    (tmp_path / "conf" / "hardware" / "cpu.yaml").write_text(HARDWARE.replace("laptop", "cpu"))
    result = run_cli([verb, "--config-dir", "conf", "hardware=cpu"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lightning-accel: error: --config-dir='conf' holds hardware/cpu.yaml, named as the "
        "pack's own hardware option cpu, which Hydra finds first, so yours would be ignored; "
        "give it a name of its own and extend cpu by its defaults list."
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["conf"], "nothing written"


@pytest.mark.parametrize("verb", ["train", "plan"])
def test_a_project_config_yaml_that_hydra_would_ignore_exits_2(verb: str, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("seed: 5\n")
    result = run_cli([verb, "--config-dir", "conf"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "lightning-accel: error: --config-dir='conf' holds config.yaml, named as the pack's "
        "primary config, which Hydra finds first, so yours would be ignored; put its settings "
        "in a recipe of your own (DIR/recipe/NAME.yaml, extending one of the pack's by its "
        "defaults list)."
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["conf"], "nothing written"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "name: bad\ndevices: [1,\n",
            "config file='{path}' is not valid YAML (expected the node content, but found "
            "'<stream end>' at line 3).",
        ),
        (
            "defaults:\n  - /accelerators: gpu\nname: bad\n",
            "accelerators='gpu' is not a config group (named in a config file's defaults "
            "list); valid choices: callbacks, hardware, launcher,",
        ),
        (
            "name: bad\nfoo: 1\n",
            "hardware.foo=1 (set in conf/hardware/bad.yaml) is not a known key under "
            "'hardware'; valid choices: accelerator, devices, name",
        ),
        (
            "defaults:\n  - cpu\n  - _self_\nname: bad\ndevices: two\n",
            "hardware.devices='two' (set in conf/hardware/bad.yaml) is not a count; valid "
            "choices: auto, 1, 2, ....",
        ),
        (  # set by a project file that the chosen one extends
            "defaults:\n  - base\n  - _self_\nname: bad\n",
            "hardware.devices='two' (set in conf/hardware/base.yaml) is not a count",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["train", "doctor"])
def test_a_broken_project_profile_is_named_in_one_sentence(
    verb: str, content: str, expected: str, tmp_path: Path
) -> None:
    profile = tmp_path / "conf" / "hardware" / "bad.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text(content)
    if "base" in content:
        (profile.parent / "base.yaml").write_text("defaults:\n  - cpu\n  - _self_\ndevices: two\n")
    result = run_cli([verb, "--config-dir", "conf", "hardware=bad"], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("lightning-accel: error: " + expected.format(path=profile))
    assert [p.name for p in tmp_path.iterdir()] == ["conf"], "nothing written"


@pytest.mark.parametrize("entry", ["/hardware: laptop", "override /hardware: laptop"])
@pytest.mark.parametrize("verb", ["train", "plan"])
def test_a_projects_recipe_choosing_its_hardware_is_named_with_what_to_do(
    verb: str, entry: str, project: Path
) -> None:
    # Hydra said "Multiple values for hardware. To override a value use 'override hardware:
    # auto'", and with override "Could not override 'hardware'": no file named, and its hint
    # fails too (the run's config chooses hardware after the recipe)
    recipe = project / "conf" / "recipe" / "tiny.yaml"
    recipe.write_text(recipe.read_text().replace("  - gpt\n", f"  - gpt\n  - {entry}\n"))
    result = run_cli([verb, "--config-dir", "conf", "recipe=tiny"], cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "lightning-accel: error: hardware='laptop' is chosen in the defaults list of "
        "conf/recipe/tiny.yaml, where Hydra cannot take it: the pack's config.yaml chooses "
        "hardware for every run; drop it there and give hardware=laptop on the command line."
    ]
    assert sorted(p.name for p in project.iterdir()) == ["conf"], "nothing written"


@pytest.mark.parametrize("verb", ["train", "plan"])
def test_a_value_a_projects_recipe_got_wrong_names_the_recipe_unless_the_command_set_it(
    verb: str, tmp_path: Path
) -> None:
    recipe = tmp_path / "conf" / "recipe" / "tiny.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(RECIPE.replace("n_head: 2", "n_head: 3"))
    from_file = run_cli([verb, "--config-dir", "conf", "recipe=tiny"], cwd=tmp_path)
    assert from_file.returncode == 2
    assert from_file.stderr.splitlines() == [
        "lightning-accel: error: model.n_head=3 (set in conf/recipe/tiny.yaml) does not "
        "divide model.d_model=32."
    ]
    given = run_cli([verb, "-cd", "conf", "recipe=tiny", "model.n_head=5"], cwd=tmp_path)
    assert given.returncode == 2
    assert given.stderr.splitlines() == [
        "lightning-accel: error: model.n_head=5 does not divide model.d_model=32."
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["conf"], "nothing written"


def test_a_glob_sweep_is_checked_over_the_options_of_the_pack_and_the_project(
    project: Path,
) -> None:
    """Hydra's parser cannot expand glob() without its config loader: the runner's checks
    failed with Hydra's traceback."""
    from lightning_accel.cli.compose import config_dir_override, job_overrides
    from lightning_accel.profiles import profile_names

    searchpath = config_dir_override(str(project / "conf"))

    def swept(pattern: str) -> list[str]:
        jobs = job_overrides([searchpath, f"hardware={pattern}"], multirun=True)
        return [job[-1].removeprefix("hardware=") for job in jobs]

    assert swept("glob(l*)") == ["laptop"]
    pack = profile_names("hardware")
    assert swept("glob(*_cpu,exclude=xla*)") == sorted(
        name for name in pack if name.endswith("_cpu") and not name.startswith("xla")
    )
    assert swept("glob(*)") == sorted([*pack, "laptop"])
