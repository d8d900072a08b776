"""service.lifeline: a child started through it dies with its parent, even a parent
killed with SIGKILL (which runs no clean-up of its own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factories import REPO
from tests.worker.harness import wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"
)

SLEEP = "/bin/sleep"

#: A parent that starts ``sleep`` through the lifeline, says its pid, and waits.
PARENT = f"""
import subprocess, signal, sys, time
from service.lifeline import command
child = subprocess.Popen(command([{SLEEP!r}, "60"], signal.SIGTERM))
print(child.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    """No such process any more, or only its unreaped entry (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_child_is_signalled_when_its_parent_is_killed() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            comm = Path(f"/proc/{child}/comm")
            wait_for(lambda: comm.read_text().strip() == "sleep", 10, "the shim to exec sleep")
            parent.kill()
            parent.wait()
            deadline = time.monotonic() + 10
            while not _gone(child):
                assert time.monotonic() < deadline, "the child outlived its killed parent"
                time.sleep(0.05)
        finally:
            if parent.poll() is None:
                parent.kill()


def test_child_whose_parent_is_already_gone_does_not_start() -> None:
    """The parent may die before the child asks to be tied to it: then no signal would
    ever come, so the shim gives up instead of starting an orphan."""
    not_the_parent = str(os.getppid() + 1_000_000)
    shim = [sys.executable, "-m", "service.lifeline", not_the_parent, "TERM", SLEEP, "60"]
    assert subprocess.run(shim, cwd=REPO, timeout=30).returncode == -signal.SIGTERM
