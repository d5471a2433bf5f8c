"""The option reference of the docs site, generated from the code: every key of a run's
config (the dataclasses of :mod:`lightning_accel.cli.schema` and :mod:`lightning_accel.config`,
each described in its class docstring's ``Attributes:`` section), the options of the pack's
strategies (``hardware.strategy_options.*``, from their ``Args:`` sections), the values the
code accepts (the choices passed to ``require_choice``) and the config groups under ``conf/``.

``docs/gen_options.py`` writes :func:`options_page` as ``options.md`` when the docs are
built; everything here reads the source and the YAML files, nothing is written by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_accel.cli.schema import RunConfig
from lightning_accel.config import TRAINER_ARGUMENTS_SET_ELSEWHERE
from lightning_accel.profiles import config_dir

PACKAGE_DIR = Path(__file__).resolve().parent.parent
STRATEGY_OPTIONS = "hardware.strategy_options"
# "name: text", "name (type): text" or "a, b, c: text" opening an entry of a docstring section
# a Sphinx cross-reference role: :class:`~module.Name` or :mod:`module`
_ROLE = re.compile(r":(?:\w+:)?\w+:`(~?)([^`]+)`")
# inline code: ``a`` or `a`
_CODE_SPAN = re.compile(r"(``[^`]+``|`[^`]+`)")
_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_]\w*)*)(?:\s*\([^)]*\))?:\s*(.*)$")


@dataclass(frozen=True)
class Option:
    """One key of the run config.

    Attributes:
        key: The dotted key, as written on the command line (``launcher.nnodes``).
        type: Its type as annotated in the code.
        default: Its default, written as in YAML.
        choices: The values the code accepts, written as in YAML; empty when any value of
            the type is accepted.
        meaning: What it does, from the docstring that describes it.
    """

    key: str
    type: str
    default: str
    choices: tuple[str, ...]
    meaning: str


@dataclass(frozen=True)
class Section:
    """A dataclass of the run config: its key, summary and the options of its own fields.

    Attributes:
        key: The dotted key of the dataclass (empty for the top level).
        type: The dataclass's name.
        summary: The docstring's text before its sections.
        options: One option per field that is not itself a dataclass.
    """

    key: str
    type: str
    summary: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class StrategyOptions:
    """The ``hardware.strategy_options`` a registered strategy of the pack takes.

    Attributes:
        name: The strategy's registered name (``hardware.strategy``).
        cls: The class that implements it.
        summary: The first paragraph of the class docstring.
        options: Its ``__init__`` arguments as options; ``**kwargs`` as the key ``*``.
        bases: The base classes, named as in the source.
        has_init: Whether the class defines ``__init__`` (else its bases take the options).
    """

    name: str
    cls: str
    summary: str
    options: tuple[Option, ...]
    bases: tuple[str, ...]
    has_init: bool


@dataclass(frozen=True)
class GroupOption:
    """One YAML file of a config group.

    Attributes:
        name: The option's name (the file's stem): ``GROUP=NAME`` selects it.
        description: The file's header comment, up to its first example command.
        default: Whether ``conf/config.yaml`` selects it by default.
    """

    name: str
    description: str
    default: bool


def docstring_entries(doc: str | None, section: str) -> dict[str, str]:
    """The entries of a Google-style docstring section (``Attributes``, ``Args``) by name,
    each description joined into one line; an entry naming several (``a, b: ...``) is
    given to each."""
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = lines.index(f"{section}:") + 1
    except ValueError:
        return {}
    entries: dict[str, list[str]] = {}
    names: list[str] = []
    indent = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break
        indent = depth if indent is None else indent
        match = _ENTRY.match(line.strip()) if depth == indent else None
        if match:
            names = [name.strip().lstrip("*") for name in match.group(1).split(",")]
            for name in names:
                entries[name] = [match.group(2)]
        else:
            for name in names:
                entries[name].append(line.strip())
    return {name: " ".join(words).strip() for name, words in entries.items()}


def docstring_summary(doc: str | None) -> str:
    """The text of a docstring before its first section, joined into one paragraph per
    blank-line-separated block."""
    paragraphs: list[list[str]] = [[]]
    for line in inspect.cleandoc(doc or "").splitlines():
        if re.fullmatch(r"[A-Z]\w*( \w+)?:", line):
            break
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def yaml_value(value: Any) -> str:
    """``value`` as it is written in a YAML file or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return str(value)


def field_default(item: dataclasses.Field) -> Any:
    """The default of a dataclass field (its factory called when it has one)."""
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def is_section(item: dataclasses.Field) -> bool:
    """Whether a field holds a nested dataclass (a section of its own)."""
    return dataclasses.is_dataclass(field_default(item))


def schema_sections(root: type = RunConfig) -> list[Section]:
    """Every dataclass of the run config from ``root`` down, depth first in field order,
    each with the options of its own fields and their allowed values."""
    choices = code_choices()
    sections: list[Section] = []

    def walk(cls: type, prefix: str) -> None:
        meanings = docstring_entries(cls.__doc__, "Attributes")
        options = tuple(
            Option(
                key=f"{prefix}{item.name}",
                type=str(item.type),
                default=yaml_value(field_default(item)),
                choices=choices.get(f"{prefix}{item.name}", ()),
                meaning=meanings.get(item.name, ""),
            )
            for item in dataclasses.fields(cls)
            if not is_section(item)
        )
        key = prefix.rstrip(".")
        sections.append(Section(key, cls.__name__, docstring_summary(cls.__doc__), options))
        for item in dataclasses.fields(cls):
            if is_section(item):
                walk(type(field_default(item)), f"{prefix}{item.name}.")

    walk(root, "")
    return sections


def schema_fields(root: type = RunConfig) -> Iterator[tuple[str, type, dataclasses.Field]]:
    """Every field of the run config from ``root`` down: its dotted key, the dataclass that
    declares it, and the field; nested dataclasses included, before their own fields."""
    for item in dataclasses.fields(root):
        yield item.name, root, item
        if is_section(item):
            for key, owner, inner in schema_fields(type(field_default(item))):
                yield f"{item.name}.{key}", owner, inner


def undescribed_fields(root: type = RunConfig) -> list[str]:
    """The dotted keys of the fields from ``root`` down that their dataclass's
    ``Attributes:`` section does not describe."""
    return [
        key
        for key, owner, item in schema_fields(root)
        if not docstring_entries(owner.__doc__, "Attributes").get(item.name)
    ]


def _modules(package_dir: Path) -> dict[str, ast.Module]:
    """The parsed source of every module of the package, by dotted name."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(encoding="utf-8"))
    return modules


def _literal(node: ast.expr) -> Any:
    """The value of a literal expression, None when it is not one."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _assigned(body: list[ast.stmt], name: str) -> ast.Assign | None:
    """The statement of ``body`` that assigns ``name``, if any."""
    for node in body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return node
    return None


def _constant(modules: dict[str, ast.Module], module: str, name: str) -> Any:
    """The literal value of the module-level name ``name`` in ``module``, following
    ``from ... import`` into the package's other modules; None when it is not a literal."""
    body = modules.get(module, ast.Module(body=[], type_ignores=[])).body
    assignment = _assigned(body, name)
    if assignment is not None:
        return _literal(assignment.value)
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if any((alias.asname or alias.name) == name for alias in node.names):
                original = next(a.name for a in node.names if (a.asname or a.name) == name)
                return _constant(modules, node.module, original)
    return None


def code_choices(package_dir: Path = PACKAGE_DIR) -> dict[str, tuple[str, ...]]:
    """The values the code accepts, by key: the choices of every
    ``require_choice("key", value, choices)`` in the package (a literal or a module-level
    constant), and for a key no ``require_choice`` checks, those of a
    ``ConfigError("key", value, message, CHOICES)`` that names a module-level constant (such
    an error may refuse values in one context only, as XLA refuses some precisions)."""
    return _choices(_modules(package_dir))


def _choices(modules: dict[str, ast.Module]) -> dict[str, tuple[str, ...]]:
    required: dict[str, tuple[str, ...]] = {}
    refused: dict[str, tuple[str, ...]] = {}
    for module, tree in modules.items():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            if node.func.id == "require_choice" and len(node.args) == 3:
                found, given = required, node.args[2]
            elif (
                node.func.id == "ConfigError"
                and len(node.args) == 4
                and isinstance(node.args[3], ast.Name)
            ):
                found, given = refused, node.args[3]
            else:
                continue
            if isinstance(given, ast.Name):
                values = _constant(modules, module, given.id)
            else:
                values = _literal(given)
            if isinstance(values, (tuple, list)):
                found[node.args[0].value] = tuple(yaml_value(v) for v in values)
    return {**refused, **required}


def _class_attribute(node: ast.ClassDef, name: str) -> Any:
    """The literal value a class body assigns to ``name``, or None."""
    assignment = _assigned(node.body, name)
    return None if assignment is None else _literal(assignment.value)


def _init_options(
    node: ast.ClassDef,
    init: ast.FunctionDef,
    meanings: dict[str, str],
    choices: dict[str, tuple[str, ...]],
) -> tuple[Option, ...]:
    """The keyword arguments of a strategy's ``__init__`` as options, with their meanings
    (from the ``Args:`` section) and the values the code accepts; ``**kwargs`` as the key
    ``*``, which goes to the base classes."""
    arguments = init.args
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    pairs = list(zip(positional, defaults, strict=True))
    pairs += zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
    options = []
    for argument, default in pairs:
        if argument.arg == "self":
            continue
        key = f"{STRATEGY_OPTIONS}.{argument.arg}"
        options.append(
            Option(
                key=key,
                type=ast.unparse(argument.annotation) if argument.annotation else "",
                default=_source_value(default),
                choices=choices.get(key, ()),
                meaning=meanings.get(argument.arg, ""),
            )
        )
    if arguments.kwarg:
        bases = ", ".join(f"`{ast.unparse(base)}`" for base in node.bases)
        meaning = (
            meanings.get(arguments.kwarg.arg)
            or f"Any other argument of its base classes ({bases})."
        )
        options.append(Option(f"{STRATEGY_OPTIONS}.*", "", "", (), meaning))
    return tuple(options)


def _source_value(node: ast.expr | None) -> str:
    """A default as written in the source, in YAML spelling where it is a literal."""
    if node is None:
        return ""
    try:
        return yaml_value(ast.literal_eval(node))
    except ValueError:
        return ast.unparse(node)


def strategy_options(package_dir: Path = PACKAGE_DIR) -> list[StrategyOptions]:
    """Every strategy class of the package (a class with a ``strategy_name``), with the
    options its ``__init__`` takes, sorted by registered name."""
    modules = _modules(package_dir)
    choices = _choices(modules)
    found = []
    for tree in modules.values():
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            name = _class_attribute(node, "strategy_name")
            if not isinstance(name, str):
                continue
            doc = ast.get_docstring(node)
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None,
            )
            meanings = docstring_entries(doc, "Args")
            options = _init_options(node, init, meanings, choices) if init else ()
            found.append(
                StrategyOptions(
                    name=name,
                    cls=node.name,
                    summary=docstring_summary(doc).split("\n\n")[0],
                    options=options,
                    bases=tuple(ast.unparse(base) for base in node.bases),
                    has_init=init is not None,
                )
            )
    return sorted(found, key=lambda s: s.name)


def header_description(path: Path) -> str:
    """A config file's header comment up to its first example command, in one line
    (Hydra's ``@package`` directive left out)."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.strip().startswith("@package"):
            continue
        if text.startswith("   ") or not text.strip():
            break
        words.append(text.strip())
    # a description that leads into the example ends with a colon
    return re.sub(r":$", ".", " ".join(words))


def group_defaults(root: Path) -> dict[str, str | None]:
    """The option ``conf/config.yaml`` selects in each config group."""
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    return {
        group: choice
        for entry in config.get("defaults", [])
        if isinstance(entry, dict)
        for group, choice in entry.items()
    }


def config_groups(root: Path | None = None) -> dict[str, list[GroupOption]]:
    """Every config group under ``root`` (the package's config directory unless given) and
    its options, with each file's header description."""
    root = root or config_dir()
    defaults = group_defaults(root)
    return {
        group.name: [
            GroupOption(path.stem, header_description(path), defaults.get(group.name) == path.stem)
            for path in sorted(group.glob("*.yaml"))
        ]
        for group in sorted(p for p in root.iterdir() if p.is_dir())
    }


def strategy_users(root: Path | None = None) -> dict[str, list[str]]:
    """The hardware profiles that select each strategy, by strategy name."""
    users: dict[str, list[str]] = {}
    for path in sorted((root or config_dir()).glob("hardware/*.yaml")):
        strategy = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("strategy")
        users.setdefault(str(strategy), []).append(path.stem)
    return users


def plain(text: str) -> str:
    """Docstring text as Markdown: Sphinx roles (``:class:`~a.b.C```) become code (``C``)."""
    return _ROLE.sub(
        lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text
    )


def _cell(text: str) -> str:
    """``text`` made safe for one cell of a Markdown table: pipes outside code spans
    escaped (the table extension leaves those inside alone)."""
    pieces = _CODE_SPAN.split(plain(text).replace("\n", " "))
    return "".join(
        piece if _CODE_SPAN.fullmatch(piece) else piece.replace("|", "\\|") for piece in pieces
    )


def _code(text: str) -> str:
    """``text`` as inline code in a table cell, or empty."""
    return f"`{text}`" if text else ""


def _table(options: tuple[Option, ...]) -> list[str]:
    lines = ["| key | type | default | allowed values | meaning |", "|---|---|---|---|---|"]
    for option in options:
        allowed = ", ".join(_code(value) for value in option.choices)
        lines.append(
            f"| {_code(option.key)} | {_code(option.type)} | {_code(option.default)} "
            f"| {allowed} | {_cell(option.meaning)} |"
        )
    return lines


def options_page() -> str:
    """The Markdown of the option reference page."""
    sections = schema_sections()
    lines = [
        "# Options",
        "",
        "Every key of a run's config, with its type, default, the values the code accepts "
        "and what it does, then every config group and its options. This page is generated "
        "when the docs are built, from the schemas (`lightning_accel/cli/schema.py`, "
        "`lightning_accel/config.py`; each field is described in its class's `Attributes` "
        "section), the pack's strategies and the YAML files under `conf/`. Defaults are the "
        "schema's: the options `conf/config.yaml` selects (marked *default* under "
        "[Config groups](#config-groups)) set some keys to other values; "
        "`lightning-accel train --cfg job` prints a run's resolved config.",
        "",
        "Set any key on the command line: `lightning-accel train hardware.devices=2 "
        "optimization.precision=bf16-mixed`.",
        "",
    ]
    for section in sections:
        title = f"`{section.key}`" if section.key else "Top level"
        lines += [f"## {title}", "", f"`{section.type}`: {plain(section.summary)}", ""]
        lines += _table(section.options) + [""]
        if section.key == "hardware":
            lines += _strategy_lines()
        if section.key == "trainer":
            lines += _trainer_elsewhere_lines()
    lines += _group_lines()
    return "\n".join(lines) + "\n"


def _strategy_lines() -> list[str]:
    users = strategy_users()
    lines = [
        f"### `{STRATEGY_OPTIONS}`",
        "",
        f"`{STRATEGY_OPTIONS}` holds the keyword arguments of the strategy that "
        "`hardware.strategy` names; those of the pack's strategies follow. A key the strategy "
        "does not take is refused before the run starts, naming the options it takes.",
        "",
    ]
    for strategy in strategy_options():
        profiles = ", ".join(f"`{name}`" for name in users.get(strategy.name, []))
        summary = plain(strategy.summary)
        lines += [f"#### Strategy `{strategy.name}`", "", f"`{strategy.cls}`: {summary}", ""]
        if profiles:
            lines += [f"Hardware profiles: {profiles}.", ""]
        if strategy.options:
            lines += _table(strategy.options) + [""]
        elif not strategy.has_init:
            bases = ", ".join(f"`{base}`" for base in strategy.bases)
            lines += [f"No options of its own: they go to its base classes ({bases}).", ""]
    return lines


def _trainer_elsewhere_lines() -> list[str]:
    lines = [
        "### Trainer arguments set elsewhere",
        "",
        "These `lightning.Trainer` arguments are not `trainer.*` keys: the profiles and "
        "config groups set them. Setting one under `trainer` is refused with the key to use.",
        "",
        "| Trainer argument | set with |",
        "|---|---|",
    ]
    for argument, key in TRAINER_ARGUMENTS_SET_ELSEWHERE.items():
        lines.append(f"| `{argument}` | {_cell(key)} |")
    return lines + [""]


def _group_lines() -> list[str]:
    lines = [
        "## Config groups",
        "",
        "Each group is a directory under `conf/`; `GROUP=OPTION` selects one of its YAML "
        "files (`lightning-accel train --help` lists them too). The description is the "
        "file's header comment.",
        "",
    ]
    for group, options in config_groups().items():
        lines += [f"### Group `{group}`", "", "| option | description |", "|---|---|"]
        for option in options:
            name = f"`{option.name}` (*default*)" if option.default else f"`{option.name}`"
            lines.append(f"| {name} | {_cell(option.description)} |")
        lines.append("")
    return lines
