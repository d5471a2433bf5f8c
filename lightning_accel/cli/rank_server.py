"""The server that ranks and timed trials are forked from: a process that imported torch,
Lightning and the pack once, so that each process forked from it starts without importing
them (a fresh interpreter spends seconds of CPU on that, and a restart would pay it again).

It is multiprocessing's fork server (start method ``forkserver``), started once per process
(:func:`start_rank_server`) as soon as a command knows that it will launch ranks, so that
its imports overlap the command's checks. A command forked from a
:class:`~lightning_accel.cli.command_server.CommandServer` instead forks the server from
itself before it runs, so the server starts with everything already imported. A process
forked from the server takes its launcher's environment, thread count and SIGTERM back
(:func:`take_launcher_environment`); a timed trial runs in one
(:func:`in_a_fresh_process`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeoutError
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from lightning_accel.cli.console import rank_environment

T = TypeVar("T")

# what every rank imports: loaded once, in the server the ranks are forked from
_RANK_MODULES = [
    "lightning_accel.cli.rank_server_end",
    "lightning_accel.cli.rank",
    "lightning_accel.cli.runner",
]
START_METHOD = "forkserver"


class _RankServer:
    """The environment the rank server started with (None until started): a process forked
    from it applies what differs from it in its launcher's environment when it starts."""

    environment: dict[str, str] | None = None


def start_rank_server(forked: bool = False) -> bool:
    """Start the server the ranks are forked from, importing :data:`_RANK_MODULES` in it
    while this process goes on checking and preparing the run; the environment it starts
    with is the ranks' (:func:`~lightning_accel.cli.console.rank_environment`). Started
    once per process; returns whether this call started it.

    Args:
        forked: the server is a fork of this process rather than a new interpreter, so it
            starts with everything this process imported. Only for a process that has
            started no thread and touched no accelerator yet (a command just forked from a
            :class:`~lightning_accel.cli.command_server.CommandServer`): the ranks inherit
            its state.
    """
    from multiprocessing import forkserver

    if _RankServer.environment is not None:
        return False
    multiprocessing.get_context(START_METHOD).set_forkserver_preload(_RANK_MODULES)
    # The server ignores SIGTERM (set before it is started, it survives the exec): a SIGTERM
    # to the whole process group (scancel, preemption) would otherwise end it, and torch
    # gives each rank it forked SIGINT when it ends, which interrupts the rank's own stop.
    # Its processes take SIGTERM again (take_launcher_environment); the server still ends
    # with this process.
    default_sigterm = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with changed_environment(rank_environment()):
            _RankServer.environment = dict(os.environ)
            with _servers_forked() if forked else nullcontext():
                forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, default_sigterm)
    return True


@contextmanager
def _servers_forked() -> Iterator[None]:
    """Within the block, multiprocessing starts its servers (the fork server and its
    resource tracker) as forks of this process running the code it would have given a new
    interpreter, with the same file descriptors. Overrides ``multiprocessing.util``'s
    undocumented ``spawnv_passfds``, which every Python since 3.4 starts them with
    (tests/test_upstream_pins.py pins it)."""
    from multiprocessing import util

    spawn = util.spawnv_passfds
    util.spawnv_passfds = _fork_running
    try:
        yield
    finally:
        util.spawnv_passfds = spawn


def _fork_running(path: str, args: list[str], passfds: Iterable[int]) -> int:
    """``spawnv_passfds``'s contract, forked: a child of this process keeping only
    standard input, output, error and ``passfds`` open runs the ``-c`` code of ``args``;
    returns its process id."""
    code = args[args.index("-c") + 1]
    child = os.fork()
    if child:
        return child
    status = 1
    try:
        keep = sorted({0, 1, 2, *passfds})
        for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        exec(compile(code, "<multiprocessing server>", "exec"), {"__name__": "__main__"})
        status = 0
    except SystemExit as end:  # how the fork server ends when its clients have gone
        status = end.code if isinstance(end.code, int) else 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)  # never back into the code that forked it


def stop_rank_server() -> None:
    """Stop the rank server at once, if this process started one: a command refused after
    starting it leaves nothing running, although the server may still be importing (it
    would end only once its imports were done)."""
    from multiprocessing import forkserver

    if _RankServer.environment is None:
        return
    # no public API stops the server; tests/test_upstream_pins.py pins these names
    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        os.kill(server._forkserver_pid, signal.SIGKILL)
    server._stop()  # reaps it and forgets it, so that a later start starts anew
    _RankServer.environment = None


def launcher_environment() -> dict[str, str | None]:
    """The variables to set (None: remove) to turn the server's environment into this
    process's: what a process forked from the server applies when it starts."""
    assert _RankServer.environment is not None, "the rank server has not been started"
    start, now = _RankServer.environment, dict(os.environ)
    changes: dict[str, str | None] = {k: v for k, v in now.items() if start.get(k) != v}
    changes.update({k: None for k in start if k not in now})
    return changes


def set_variable(name: str, value: str | None) -> None:
    """Set environment variable ``name`` (None: remove it)."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextmanager
def changed_environment(changes: dict[str, str | None]) -> Iterator[None]:
    """This process's environment with ``changes`` (None: removed) while inside."""
    previous = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            set_variable(name, value)
        yield
    finally:
        for name, value in previous.items():
            set_variable(name, value)


def take_launcher_environment(changes: dict[str, str | None]) -> None:
    """In a process forked from the rank server: SIGTERM back (the server ignores it), the
    launcher's environment (``changes`` from the server's, :func:`launcher_environment`)
    and its thread count (``OMP_NUM_THREADS``, read only when torch was imported, in the
    server)."""
    import torch

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name, value in changes.items():
        set_variable(name, value)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _called_as_launched(
    changes: dict[str, str | None], function: Callable[..., T], args: tuple[Any, ...]
) -> T:
    """``function(*args)`` in a process forked from the rank server, in its launcher's
    environment."""
    take_launcher_environment(changes)
    return function(*args)


def in_a_fresh_process(function: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
    """``function(*args)`` run in a child process forked from the rank server (started for
    it, and stopped after, when it is not running yet): what a timed trial leaves behind
    (compiled code and compile workers, loader workers, allocator caches, device memory)
    then never touches the run that follows. Its exceptions are raised here; a child that
    dies raises ``BrokenProcessPool``; past ``timeout`` seconds (None: no limit) the child
    is killed and ``TimeoutError`` raised."""
    started = start_rank_server()
    try:
        context = multiprocessing.get_context(START_METHOD)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            child = pool.submit(os.getpid).result()  # the one worker, to kill at the timeout
            future = pool.submit(_called_as_launched, launcher_environment(), function, args)
            try:
                return future.result(timeout)
            except FuturesTimeoutError:
                os.kill(child, signal.SIGKILL)
                raise TimeoutError(f"it did not end in {timeout:g} s") from None
    finally:
        if started:
            stop_rank_server()
