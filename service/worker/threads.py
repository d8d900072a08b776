"""Blocking job work in a thread the worker can walk away from when its drain ends.

The drain deadline is counted from the stop signal, and the process must be gone by it
(plus the moment a hand-back takes): ``serve`` and orchestrators kill a worker at drain +
grace. A tile batch cannot be interrupted (a CUDA kernel, a C decoder), and
``asyncio.to_thread`` would not help: the event loop can stop waiting for it, but
``asyncio.run`` joins the default executor's threads before the process exits, so a CPU
worker with 10 s tile batches overran its drain by one batch. Here the work runs in a
*daemon* thread instead: at the deadline the worker stops waiting, hands the job back
and exits; the thread ends at its next tile batch (its progress callback sees the
hand-back) or dies with the process, and whatever it computed is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from service.worker.job import HandedBack

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_until_handed_back(overdue: asyncio.Event, fn: Callable[[], T], name: str) -> T:
    """``fn()`` in a daemon thread; raises :class:`HandedBack` as soon as ``overdue`` is
    set (the drain is over) without waiting for ``fn`` to return."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # abandoned: nobody waits for it any more
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: the worker has exited
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    if overdue.is_set():
        done.cancel()
        raise HandedBack()
    waiter: asyncio.Future[Any] = asyncio.ensure_future(overdue.wait())
    pending: set[asyncio.Future[Any]] = {done, waiter}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        done.cancel()
        raise
    finally:
        waiter.cancel()
    if not done.done():
        done.cancel()
        log.info("%s: drain over; not waiting for the thread's current step", name)
        raise HandedBack()
    return done.result()
