"""Write one API reference page per public module of ``lightning_accel``, and the section's
navigation (run by the mkdocs-gen-files plugin when the docs are built).

The pages are made from the package as it is, so a module added, renamed or moved changes
the reference by itself.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_accel"


def public_modules(package: Path = PACKAGE) -> list[tuple[str, ...]]:
    """The dotted-name parts of every module of ``package`` whose name has no leading
    underscore (a package stands for its ``__init__.py``), sorted."""
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            modules.append(parts)
    return sorted(modules)


def write_reference() -> None:
    """Write ``reference/<module>.md`` for each public module and ``reference/SUMMARY.md``."""
    nav = mkdocs_gen_files.Nav()
    for parts in public_modules():
        name = ".".join(parts)
        nav[parts] = f"{name}.md"
        with mkdocs_gen_files.open(f"reference/{name}.md", "w") as page:
            page.write(f"::: {name}\n")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


write_reference()
