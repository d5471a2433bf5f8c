"""A server that ``lightning-accel`` commands are forked from, for callers that run many.

A fresh ``lightning-accel train`` spends about 10 s of CPU importing torch, Lightning,
torchmetrics and Hydra before its first step. ``bench`` and ``verify`` run each cell as a
command of its own; :class:`CommandServer` starts one server that imports those once, as
the console script would (deferred strategy registration, the exit handler first, torch's
C++ log level silenced before torch loads), and forks a child per command. The child takes
the command's working directory, environment, ``PYTHONPATH`` and output files, and runs the
console script's command as ``lightning-accel ARGS`` would, exit handlers included; it has
an address space of its own. Before the command runs, the child forks the server its ranks
will be forked from (:func:`~lightning_accel.cli.rank_server.start_rank_server`), so that ranks,
too, start with everything imported; other processes it starts are started as usual. The
server never initialises an accelerator or starts a thread, so a child and its ranks may.

Protocol: one connection per command on a Unix socket; the client sends one JSON line
(``args``, ``cwd``, ``env``, ``stdout``, ``stderr``), the server answers a line with the
child's process id, then one with its exit status (negative: killed by that signal). The
server ends when its client's end of its standard input closes (the client has ended).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from lightning_accel.cli.process_end import ProcessEnd

# what a command imports on its way to training, evaluating or benching
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
_DEFER_IMPORTS = "LIGHTNING_ACCEL_DEFER_IMPORTS"
START_TIMEOUT_SECONDS = 300.0


class CommandServer:
    """A running server and the client that runs commands in it.

    Args:
        environment: the server's environment (what the imports see); each command gets
            its own in :meth:`run`.
    """

    _shared: ClassVar[CommandServer | None] = None

    def __init__(self, environment: dict[str, str] | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="lightning-accel-commands-"))
        self.address = self.directory / "socket"
        with (self.directory / "server.log").open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self.address)],
                env={**(os.environ if environment is None else environment), _DEFER_IMPORTS: "1"},
                stdin=subprocess.PIPE,  # closed when this process ends: the server ends too
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.address.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the command server did not start: {self.log()}")
            time.sleep(0.05)

    @classmethod
    def shared(cls, environment: dict[str, str] | None = None) -> CommandServer:
        """This process's server, started on first use (again if it has ended) with
        ``environment`` (default: this process's)."""
        if cls._shared is None or cls._shared.process.poll() is not None:
            cls._shared = cls(environment)
        return cls._shared

    def log(self) -> str:
        """The end of what the server printed (import errors, warnings)."""
        path = self.directory / "server.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def run(
        self,
        args: list[str],
        cwd: Path,
        environment: dict[str, str],
        stdout: Path,
        stderr: Path,
        timeout: float | None = None,
    ) -> int:
        """Run ``lightning-accel ARGS`` in ``cwd`` with ``environment``, its output written
        to ``stdout`` and ``stderr``; returns its exit status (negative: the signal that
        killed it).

        Raises:
            subprocess.TimeoutExpired: it ran past ``timeout`` seconds; it was killed with
                every process it started.
        """
        request = {"args": args, "cwd": str(cwd), "env": environment}
        request.update(stdout=str(stdout), stderr=str(stderr))
        status = None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(self.address))
            connection.sendall((json.dumps(request) + "\n").encode())
            with connection.makefile("r") as answers:
                # the fork's pid comes at once; the timeout is the command's, after it: a
                # timeout before it left the command running, unknown, and raised
                child = int(answers.readline())
                connection.settimeout(timeout)
                try:
                    status = int(answers.readline())
                except TimeoutError:
                    raise subprocess.TimeoutExpired(args, timeout or 0) from None
                finally:
                    if status is None:  # timed out, or the caller was interrupted
                        _kill_group(child)
        return status

    def stop(self) -> None:
        """Stop the server (commands it forked go on) and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _kill_group(leader: int) -> None:
    """SIGKILL process ``leader`` and its process group (the group may not exist yet)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(leader, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _preload() -> ProcessEnd:
    """Import what the commands use, in the state the console script imports it in; returns
    the commands' exit handler, registered before any other as the console script's is."""
    import importlib

    from lightning_accel.cli.console import quiet_cpp_log
    from lightning_accel.cli.process_end import ProcessEnd

    end = ProcessEnd()
    quiet_cpp_log(os.environ)  # before torch loads, as quiet_upstream does in a command
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
    from lightning_accel.cli.console import quiet_cpp_log

    environment = {**request["env"], _DEFER_IMPORTS: "1"}
    quiet_cpp_log(environment)  # the level torch loaded with, in the server
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
    from lightning_accel.cli.rank_server import start_rank_server

    # forked now, while this process is the server's clean copy (no thread, no accelerator):
    # ranks the command starts import nothing; a command that starts none leaves it idle
    start_rank_server(forked=True)

    import lightning_accel_entry

    sys.exit(lightning_accel_entry.run_command(end))


def _exit_status(wait_status: int) -> int:
    """``subprocess``'s return code for a ``waitpid`` status."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def serve(address: str) -> None:
    """Fork a command for each connection to ``address`` until standard input closes."""
    end = _preload()
    pending = Path(address + ".binding")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(pending))
    listener.listen(16)
    pending.rename(address)  # clients connect once the imports are done
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}
    while True:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is sys.stdin:
                end.status = 0
                sys.exit(0)  # the client has ended
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
