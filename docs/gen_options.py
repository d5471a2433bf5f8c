"""Write ``options.md``, the reference of every run option and config group (run by the
mkdocs-gen-files plugin when the docs are built; the content comes from
:mod:`lightning_accel.cli.option_reference`)."""

from __future__ import annotations

import os

import mkdocs_gen_files

# the schemas are read without importing torch (the pack registers its strategies otherwise)
os.environ.setdefault("LIGHTNING_ACCEL_DEFER_IMPORTS", "1")

from lightning_accel.cli.option_reference import options_page  # noqa: E402

with mkdocs_gen_files.open("options.md", "w") as page:
    page.write(options_page())
