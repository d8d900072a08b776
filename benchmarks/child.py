"""The one child-process harness: run a measurement in a fresh Python process.

A benchmark case that reports peak memory must run alone in its process (``ru_maxrss``
never goes down), and one that compares allocator settings must start from a clean heap.
The parent calls :func:`run_in_child` with a function named ``module:function`` and
JSON-able keyword arguments; the child (``python -m benchmarks.child PAYLOAD``) imports
the function, calls it and prints its JSON-able result as the last line of its output.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The repository root: the child runs there so that ``benchmarks.*`` imports resolve.
REPO = Path(__file__).resolve().parents[1]


class ChildFailed(RuntimeError):
    """The child exited with an error or ran past its time; the message says which."""


def run_in_child(
    function: str, kwargs: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """``module:function(**kwargs)`` in a fresh interpreter; its returned dict.

    Raises :class:`ChildFailed` with the child's last line of stderr (where a traceback
    ends with the exception) or the timeout.
    """
    payload = json.dumps({"function": function, "kwargs": kwargs})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.child", payload],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ChildFailed(lines[-1] if lines else f"exit {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    module, _, name = spec["function"].partition(":")
    result = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
