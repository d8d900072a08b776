"""An engine wrapper that measures what the worker's throughput depends on.

The worker hands :func:`service.engines.pipeline.reconstruct` a :class:`MeteredEngine`
instead of the model's engine, so each engine call counts towards the engine's busy time
(whose rate is its busy fraction: the figure prefetching raises) and the tiles-per-call
histogram, without the pipeline or the backends knowing about metrics.
"""

from __future__ import annotations

import time

import numpy as np

from service.engines.base import Engine, EngineWrapper, TileBatch
from service.metrics import WorkerMetrics


class MeteredEngine(EngineWrapper):
    """``engine`` with every :meth:`run` timed and its batch size observed."""

    def __init__(self, engine: Engine, metrics: WorkerMetrics) -> None:
        super().__init__(engine)
        self.metrics = metrics

    def run(self, batch: TileBatch) -> np.ndarray:
        began = time.perf_counter()
        try:
            return self.engine.run(batch)
        finally:
            self.metrics.engine_busy_seconds.inc(time.perf_counter() - began)
            self.metrics.tiles_per_call.observe(batch.size)
