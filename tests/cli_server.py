"""A server the tests' ``lightning-accel`` commands are forked from.

A fresh ``lightning-accel train`` spends about 10 s of CPU importing torch, Lightning,
torchmetrics and Hydra before its first step; the suite runs its commands by the hundred.
This server imports them once, as the console script would (deferred strategy
registration, torch's C++ log level silenced before torch loads), then forks one child per
command: the child takes the command's working directory, environment, ``PYTHONPATH`` and
output files, and runs the console script's ``main`` exactly as ``lightning-accel ARGS``
would, exit handlers included. Ranks, bench cells and other processes the command starts
are started as usual.

Protocol: one connection per command on a Unix socket; the client sends one JSON line
(``args``, ``cwd``, ``env``, ``stdout``, ``stderr``), the server answers a line with the
child's process id, then one with its exit status (negative: killed by that signal).

Run as ``python tests/cli_server.py SOCKET``; ``SOCKET`` appears once the imports are done.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_accel.cli.process_end import ProcessEnd

# what a ``lightning-accel`` command imports on its way to training, evaluating or benching
_PRELOAD = (
    "lightning_accel_entry",
    "lightning_accel.cli.main",
    "lightning_accel.cli.train",
    "lightning_accel.cli.runner",
    "lightning_accel.cli.launch",
    "lightning_accel.cli.bench",
    "lightning_accel.cli.plan",
    "lightning_accel.strategies",
)
_CPP_LOG_LEVEL = {"TORCH_CPP_LOG_LEVEL": "FATAL", "LIGHTNING_ACCEL_QUIET_CPP": "1"}


def _preload() -> ProcessEnd:
    """Import what the commands use, in the state the console script imports it in; returns
    the commands' exit handler, registered before any other as the console script's is."""
    import importlib

    from lightning_accel.cli.process_end import ProcessEnd

    os.environ["LIGHTNING_ACCEL_DEFER_IMPORTS"] = "1"
    end = ProcessEnd()
    if "TORCH_CPP_LOG_LEVEL" not in os.environ:  # as quiet_upstream does before torch loads
        os.environ.update(_CPP_LOG_LEVEL)
    for name in _PRELOAD:
        importlib.import_module(name)
    return end


def _become_command(request: dict, inherited: list[socket.socket], end: ProcessEnd) -> None:
    """In the forked child: take the command's process state, then run it; never returns
    (the console script's exit handler ends the process with the command's status)."""
    for connection in inherited:
        connection.close()
    os.setpgid(0, 0)  # the client stops the command and all it started as one group
    os.chdir(request["cwd"])
    environment = dict(request["env"])
    if "TORCH_CPP_LOG_LEVEL" not in environment:
        environment.update(_CPP_LOG_LEVEL)
    os.environ.clear()
    os.environ.update(environment)
    script_dir = str(Path(sys.executable).parent)
    python_path = [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [script_dir, *python_path, *sys.path[1:]]
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        output = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(output, fd)
        os.close(output)
    sys.argv = [str(Path(script_dir) / "lightning-accel"), *request["args"]]

    import lightning_accel_entry

    sys.exit(lightning_accel_entry.run_command(end))


def _exit_status(wait_status: int) -> int:
    """``subprocess``'s return code for a ``waitpid`` status."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def serve(address: str) -> None:
    """Fork a command for each connection to ``address`` until this process is killed."""
    end = _preload()
    pending = Path(address + ".binding")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(pending))
    listener.listen(16)
    pending.rename(address)  # clients connect once the imports are done
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}
    while True:
        for _ in selector.select(timeout=0.05):
            connection, _ = listener.accept()
            with connection.makefile("r") as lines:
                request = json.loads(lines.readline())
            sys.stdout.flush()
            sys.stderr.flush()
            child = os.fork()
            if child == 0:
                _become_command(request, [listener, connection, *running.values()], end)
            connection.sendall(f"{child}\n".encode())
            running[child] = connection
        while running:
            child, wait_status = os.waitpid(-1, os.WNOHANG)
            if child == 0:
                break
            connection = running.pop(child)
            try:
                connection.sendall(f"{_exit_status(wait_status)}\n".encode())
            except OSError:  # the client stopped waiting
                pass
            connection.close()


if __name__ == "__main__":
    serve(sys.argv[1])
