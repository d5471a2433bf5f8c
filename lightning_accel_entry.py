"""The ``lightning-accel`` console script: starts the command line without importing torch
or lightning, so that a mistake in the config is reported at once, and ends without
tearing down the interpreter once the command and the exit handlers are done."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_accel.cli.process_end import ProcessEnd


def main() -> int:
    """Run the ``lightning-accel`` command."""
    os.environ["LIGHTNING_ACCEL_DEFER_IMPORTS"] = "1"
    from lightning_accel.cli.process_end import ProcessEnd

    return run_command(ProcessEnd())  # the first exit handler, so the last to run


def run_command(end: ProcessEnd) -> int:
    """Run the command line in ``sys.argv``, recording its exit status in ``end``."""
    from lightning_accel.cli.main import main as run

    try:
        end.status = run(sys.argv[1:])
    except SystemExit as stop:
        end.record(stop.code)
        raise
    except KeyboardInterrupt:
        # Ctrl+C outside a run (a run says where it stopped itself): no traceback
        end.status = 130  # what a shell reports for Ctrl+C
        print("\nlightning-accel: stopped on SIGINT (Ctrl+C)", file=sys.stderr)
    return end.status


if __name__ == "__main__":
    sys.exit(main())
