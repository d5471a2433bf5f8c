"""Entry point of the ``lightning-accel`` command: dispatches to its verbs."""

from __future__ import annotations

import sys

from lightning_accel.cli.console import fail

USAGE = """usage: lightning-accel VERB [ARGS]

verbs:
  train [OVERRIDES]   train with Hydra-composed hardware=, optimization= and recipe= choices
                      (lightning-accel train --help lists every group and option)
"""

VERBS = ("train",)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    verb, rest = args[0], args[1:]
    if verb == "train":
        from lightning_accel.cli.train import main as train

        return train(rest)
    fail(f"'{verb}' is not a lightning-accel command; valid choices: {', '.join(VERBS)}.")
