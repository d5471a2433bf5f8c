"""The command server that bench and verify cells (and the tests' commands) are forked from."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TEST_IMPORTS, run_cli, wait_until_exited

from lightning_accel.cli.command_server import CommandServer

# a config that prints alike at any time: the run directory and id fixed
SAME_RUN = ["data.seq_len=64", "hydra.run.dir=run", "launcher.run_id=run"]
STARTS_A_SERVER = """
import time
from lightning_accel.cli.command_server import CommandServer
server = CommandServer()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def test_a_forked_command_answers_like_the_console_script(tmp_path: Path) -> None:
    """The same status and output as a new process started as the console script."""
    for args, status in ((["train", "--cfg", "job", *SAME_RUN], 0), (["nope"], 2)):
        forked = run_cli(args, cwd=tmp_path)
        fresh = run_cli(args, cwd=tmp_path, fresh=True)
        assert forked.returncode == fresh.returncode == status
        assert (forked.stdout, forked.stderr) == (fresh.stdout, fresh.stderr)
        assert ("seq_len: 64" in forked.stdout) if status == 0 else ("nope" in forked.stderr)


def test_the_server_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A bench killed with SIGKILL leaves no server behind: the server sees its standard
    input close."""
    env = {**os.environ, **TEST_IMPORTS, "LIGHTNING_ACCEL_DEFER_IMPORTS": "1"}
    client = subprocess.Popen(
        [sys.executable, "-c", STARTS_A_SERVER], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert client.stdout is not None
        server = int(client.stdout.readline())
        assert Path(f"/proc/{server}").exists()
    finally:
        client.kill()
        client.wait()
    wait_until_exited(server, timeout=30)  # raises if the server outlives its client


def test_a_command_past_its_timeout_is_killed_however_short_the_timeout(tmp_path: Path) -> None:
    """A timeout that ran out before the server named the forked command raised a bare
    TimeoutError (bench --cell-timeout 0.001 ended in a traceback) and left the command
    running."""
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with pytest.raises(subprocess.TimeoutExpired):
        CommandServer.shared().run(
            ["train", "--cfg", "job", *SAME_RUN], tmp_path, dict(os.environ), stdout, stderr, 0.001
        )
    time.sleep(3)  # the config prints in well under a second when the command runs on
    printed = stdout.read_text() if stdout.exists() else ""  # killed before it opened it
    assert printed == "", "the command was killed before it printed"
