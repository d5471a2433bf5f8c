"""Hooks of the docs build (mkdocs.yml ``hooks``)."""

from __future__ import annotations

from mkdocs.structure.files import Files, InclusionLevel

NAV_FILES = ("reference/SUMMARY.md",)


def on_files(files: Files, config: object) -> Files:
    """Keep the generated navigation of the API reference out of the site's pages: the
    literate-nav plugin still reads it."""
    for path in NAV_FILES:
        file = files.get_file_from_path(path)
        if file is not None:
            file.inclusion = InclusionLevel.EXCLUDED
    return files
