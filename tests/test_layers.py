"""The package's import layers point one way: each module imports only from its own layer
or lower ones, and one leaf module wraps torch_xla."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_accel"
# Lowest first. A module belongs to the layer of its longest matching name.
LAYERS = (
    ("errors", "config", "files", "argument_types"),
    ("machine", "cpu_load", "devices", "flops", "memory", "host_allocator", "throughput")
    + ("safe_load",)
    + ("profiles", "environments", "collectives", "xla.runtime"),
    ("precision", "hardware", "checkpoints", "early_stopping", "data", "models", "optimize")
    + ("strategies",),
    ("plan", "trainer_factory", "xla"),
    ("callbacks", "loggers"),
    ("cli", "__main__"),
)
XLA_LEAF = "xla.runtime"


def _layer(module: str) -> int:
    best, layer = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, layer = len(name), index
    assert layer is not None, f"{module} belongs to no layer; add it to LAYERS"
    return layer


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    found.pop("__init__")  # the facade re-exports every layer
    return found


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return imported


def _own(imported: set[str], modules: dict[str, Path]) -> set[str]:
    """The package's modules among ``imported`` (``from pkg import submodule`` counts as the
    submodule, not the package)."""
    names = {name.removeprefix("lightning_accel.") for name in imported} & set(modules)
    return {name for name in names if not any(n.startswith(name + ".") for n in names)}


def test_every_module_imports_only_its_own_layer_or_lower_ones() -> None:
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        for target in sorted(_own(_imports(path), modules)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_only_the_leaf_module_imports_torch_xla() -> None:
    importers = sorted(
        name
        for name, path in _modules().items()
        if any(i == "torch_xla" or i.startswith("torch_xla.") for i in _imports(path))
    )
    assert importers == [XLA_LEAF]


def test_the_layer_check_sees_an_upward_import() -> None:
    assert _layer("data.tokens") < _layer("callbacks.speed") < _layer("cli.plan")
    assert _layer("xla.runtime") < _layer("xla.spmd")
    assert "callbacks.speed" in _own(_imports(PACKAGE / "cli" / "runner.py") | {
        "lightning_accel.callbacks.speed"
    }, _modules())  # fmt: skip
