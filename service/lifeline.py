"""Child processes that die with their parent, even when the parent is killed outright.

A supervisor killed with SIGKILL (``kill -9``, the OOM killer) runs no clean-up, so its
children must be tied to it beforehand. On Linux the kernel does it: ``PR_SET_PDEATHSIG``
asks for a signal when the parent goes, and the request survives ``execve``, so it can
be made by a tiny Python shim that then becomes the real program (a Redis server as well
as a Python worker), set in the child itself rather than in a ``preexec_fn``, which is not
safe in a parent that runs threads.

    python -m service.lifeline PARENT_PID SIGNAL PROGRAM [ARG ...]

Elsewhere (macOS) there is no such request: the shim execs the program untied and logs
why; ``serve`` then finds what a crash left behind at its next start instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

log = logging.getLogger(__name__)

#: prctl(2) option: the signal this process gets when its parent exits (linux/prctl.h).
PR_SET_PDEATHSIG: Final = 1


def command(program: Sequence[str], sig: signal.Signals) -> list[str]:
    """``program``'s command line, wrapped so that it gets ``sig`` when this process exits.

    The parent-death signal is tied to the *thread* that starts the child: start it from
    a thread that lives as long as the child should (the main thread, or a supervisor
    thread that waits for it).
    """
    return [sys.executable, "-m", "service.lifeline", str(os.getpid()), sig.name, *program]


def die_with_parent(parent_pid: int, sig: signal.Signals) -> bool:
    """Ask for ``sig`` when the parent exits; False where the platform cannot.

    If the parent died before the request took effect, this process was already handed
    to another parent and no signal would ever come: it signals itself now instead.
    """
    tied = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        tied = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        if not tied:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:
        signal.raise_signal(sig)
        os._exit(128 + int(sig))  # the signal is caught or ignored: go anyway
    return tied


def main(argv: Sequence[str]) -> int:
    parent, name, *program = argv
    if not program:
        print("usage: python -m service.lifeline PARENT_PID SIGNAL PROGRAM [ARG ...]")
        return 2
    if not die_with_parent(int(parent), signal.Signals[f"SIG{name.removeprefix('SIG')}"]):
        logging.basicConfig()
        log.warning("%s will outlive its parent if the parent is killed", program[0])
    os.execv(program[0], program)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
