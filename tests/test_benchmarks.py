"""The one child-process harness the benchmarks share: a fresh interpreter per measurement."""

from __future__ import annotations

import pytest

from benchmarks.child import ChildFailed, run_in_child


def test_a_child_returns_what_its_function_returns() -> None:
    # json.loads is a real module:function that returns a dict: no test double needed.
    assert run_in_child("json:loads", {"s": '{"peak_rss_bytes": 1}'}) == {"peak_rss_bytes": 1}


def test_a_failing_child_reports_its_exception() -> None:
    with pytest.raises(ChildFailed, match="JSONDecodeError"):
        run_in_child("json:loads", {"s": "not json"})


def test_a_child_past_its_time_is_stopped() -> None:
    with pytest.raises(ChildFailed, match="timed out after 1 s"):
        run_in_child("signal:pause", {}, timeout=1)  # waits for a signal that never comes
