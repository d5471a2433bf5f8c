"""The ``lightning-accel`` console script: starts the command line without importing torch
or lightning, so that a mistake in the config is reported at once."""

import os
import sys


def main() -> int:
    """Run the ``lightning-accel`` command."""
    os.environ["LIGHTNING_ACCEL_DEFER_IMPORTS"] = "1"
    from lightning_accel.cli.main import main as run

    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
