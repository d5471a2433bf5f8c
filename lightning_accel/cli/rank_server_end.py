"""Imported first by the rank server (the fork server the ranks start from): when its
launcher has gone, the server ends without tearing down its interpreter (see
:mod:`lightning_accel.cli.process_end`). The ranks it forks end through ``os._exit``, as
every forked process of multiprocessing does, so this never runs in them."""

from lightning_accel.cli.process_end import ProcessEnd

ProcessEnd(status=0)
