"""The XLA tests' environment: XLA's CPU backend without LLVM's optimization passes.

A 20-step run of the tests' tiny GPT compiles 27 graphs; with the passes that took 37 s of
its 61 s, without them 9 s of 27 s, with the same losses to the last digit logged. The
tests check what is compiled and computed, not how fast the compiled code runs. Set before
the PJRT client starts, in this process and in the runs it starts."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = " ".join(
    filter(None, ["--xla_backend_optimization_level=0", os.environ.get("XLA_FLAGS")])
)
