"""``python -m lightning_accel``: the same as the ``lightning-accel`` command."""

import sys

from lightning_accel.cli.main import main

sys.exit(main())
