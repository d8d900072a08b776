"""Cross-job tile batching: tiles of several jobs packed into one engine call.

A small job (a 128x128 frame is one tile) fills one slot of an engine call and leaves the
rest of the tile batch empty. :class:`BatchingEngine` sits between the jobs' tiled
inference (each job in a thread of its own, :func:`service.engines.pipeline.reconstruct`)
and one engine: calls that arrive together with the same tile shape and EV stops are
concatenated into one call of at most ``max_tiles`` tiles, and each caller gets exactly
its own rows back. A partial call waits at most ``max_delay`` seconds for more tiles to
arrive (Triton's ``max_queue_delay``); a full one goes at once.

No extra thread: the first waiting caller leads (collects, runs the engine, hands out the
results), the others wait for theirs; when a leader is done, a caller whose tiles were
not taken leads the next call. Engine calls stay one at a time. Per-job progress,
cancellation and results stay exact because each job still runs its own tile loop and
blending; only the engine call is shared, and an engine that is ``batch_invariant``
(``engines.base.Engine``) gives every tile the same output in any batch, so a packed
job's result is bit for bit its solo result: the classical engine (numpy, per tile) and
AFUNet on torch CPU, which runs each tile of a call alone for this (PyTorch picks its
convolution kernels by batch size: a 32-px tile differed by 1.3e-6 between batch 1 and
2). On a GPU the batch runs as one and a packed job may differ in the last float bits,
as it would with another tile batch; the worker logs that when it packs for such an engine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from service.engines.base import Engine, EngineWrapper, TileBatch


@dataclass(eq=False)
class _Request:
    batch: TileBatch
    output: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    key: tuple[object, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.batch.height, self.batch.width, self.batch.evs)


class BatchingEngine(EngineWrapper):
    """``engine`` shared by concurrent callers, whose compatible calls are packed."""

    def __init__(self, engine: Engine, max_tiles: int, max_delay: float) -> None:
        """``max_tiles``: the most tiles per engine call (the model's tile batch);
        ``max_delay``: the longest a partial call waits to fill, in seconds."""
        super().__init__(engine)
        self.max_tiles = max(1, max_tiles)
        self.max_delay = max(0.0, max_delay)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._leading = False

    def run(self, batch: TileBatch) -> np.ndarray:
        """``batch``'s outputs, computed in one engine call with other callers' tiles."""
        request = _Request(batch)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()  # a leader collecting tiles may take these
            while not request.done:
                if not self._leading:
                    self._leading = True
                    break
                self._cond.wait()
        if not request.done:
            self._lead(request)
        if request.error is not None:
            raise request.error
        assert request.output is not None
        return request.output

    def _lead(self, own: _Request) -> None:
        """Collect a call around ``own`` (always in it), run it, hand out the results."""
        group: list[_Request] = []
        try:
            deadline = time.monotonic() + self.max_delay
            with self._cond:
                while True:
                    group = self._collect(own)
                    tiles = sum(r.batch.size for r in group)
                    left = deadline - time.monotonic()
                    if tiles >= self.max_tiles or left <= 0:
                        break
                    self._cond.wait(left)
                for request in group:
                    self._pending.remove(request)
            self._compute(group)
        finally:
            with self._cond:
                for request in group:
                    request.done = True
                if own not in group:  # collecting failed: own leaves with the error
                    own.done = True
                    own.error = own.error or RuntimeError("tile batching failed")
                    if own in self._pending:
                        self._pending.remove(own)
                self._leading = False
                self._cond.notify_all()

    def _collect(self, own: _Request) -> list[_Request]:
        """``own`` then the oldest compatible pending calls, whole, up to ``max_tiles``."""
        group = [own]
        tiles = own.batch.size
        for request in self._pending:
            if request is own or request.key != own.key:
                continue
            if tiles + request.batch.size > self.max_tiles:
                break
            group.append(request)
            tiles += request.batch.size
        return group

    def _compute(self, group: list[_Request]) -> None:
        if len(group) == 1:
            frames = group[0].batch.frames
        else:
            frames = np.concatenate([r.batch.frames for r in group])
        try:
            outputs = self.engine.run(TileBatch(frames, group[0].batch.evs))
        except BaseException as exc:
            for request in group:
                request.error = exc
            return
        start = 0
        for request in group:
            request.output = outputs[start : start + request.batch.size]
            start += request.batch.size
