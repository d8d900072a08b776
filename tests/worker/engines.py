"""Engines for tests: real implementations of the Engine protocol with known behaviour.

Not mocks: the worker runs them through the same registry, tiling, progress and error
paths as AFUNet. Each returns the reference exposure's HDR channels (a cheap, meaningful
image) and adds one behaviour a test needs: a delay per call, an engine fault, a failure.

Worker subprocesses get them through ``python -m tests.worker.engines worker``, which
registers them as backends of test architectures, then runs the real CLI. Their knobs
come from the environment (``TEST_ENGINE_DELAY``, ``TEST_ENGINE_FAULT_MARKER``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Final

import numpy as np

from service.config import Settings
from service.engines.base import TileBatch
from service.engines.registry import BACKENDS, ServedModel, ServingConfig
from service.model_repo import ModelSpec
from service.worker.models import ModelSet

#: Channels of the reference (middle) exposure's HDR estimate in the 18-channel input.
REFERENCE_HDR: Final = slice(6, 9)
#: The message torch gives for a typical CUDA fault.
CUDA_FAULT: Final = "CUDA error: an illegal memory access was encountered"


class ReferenceEngine:
    """Returns the reference exposure's HDR channels; ``delay`` seconds per call."""

    backend = "test"
    device = "cpu"
    precision = "fp32"
    batch_invariant = True

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.run(TileBatch.blank(batch, tile_h, tile_w))

    def run(self, batch: TileBatch) -> np.ndarray:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return np.ascontiguousarray(batch.model_input()[:, REFERENCE_HDR], dtype=np.float32)


class FaultOnceEngine(ReferenceEngine):
    """Raises a CUDA fault on its first job call while ``marker`` exists (and removes it)."""

    def __init__(self, marker: Path, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.marker = marker
        self.warming = True

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        super().warmup(tile_h, tile_w, batch)
        self.warming = False

    def run(self, batch: TileBatch) -> np.ndarray:
        if not self.warming and self.marker.exists():
            self.marker.unlink()
            raise RuntimeError(CUDA_FAULT)
        return super().run(batch)


class FailingEngine(ReferenceEngine):
    """Fails every job call with ``error``: by default an ordinary (not engine-fault) one."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.warming = True
        self.error = error or RuntimeError("non-finite values in the tile output")

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        super().warmup(tile_h, tile_w, batch)
        self.warming = False

    def run(self, batch: TileBatch) -> np.ndarray:
        if not self.warming:
            raise self.error
        return super().run(batch)


def served(
    name: str,
    engine: ReferenceEngine,
    tile_size: int = 64,
    overlap: int = 8,
    batch: int = 1,
) -> ServedModel:
    """A ServedModel around a test engine, as the registry would build it."""
    spec = ModelSpec(name, name, 1, Path("/nonexistent") / name, None, ("test",))
    return ServedModel(spec, engine, tile_size, overlap, batch)


def serving_only(engine: ReferenceEngine | None = None, name: str = "afunet") -> ModelSet:
    """A worker's models: ``name`` alone, run by ``engine`` (a plain reference engine by
    default), and the default for jobs naming none."""
    return ModelSet(served={name: served(name, engine or ReferenceEngine())}, preferred=name)


def _delay() -> float:
    return float(os.environ.get("TEST_ENGINE_DELAY", "0"))


def _reference(_spec: ModelSpec, _serving: ServingConfig, _settings: Settings) -> ReferenceEngine:
    return ReferenceEngine(_delay())


def _fault_once(_spec: ModelSpec, _serving: ServingConfig, _settings: Settings) -> ReferenceEngine:
    return FaultOnceEngine(Path(os.environ["TEST_ENGINE_FAULT_MARKER"]), _delay())


#: Architecture -> factory, registered as backend "test" by :func:`install`.
ARCHITECTURES: Final = {"test-reference": _reference, "test-fault-once": _fault_once}


def install() -> None:
    """Register the test engines in the real backend table."""
    for architecture, factory in ARCHITECTURES.items():
        BACKENDS[(architecture, "test")] = factory  # type: ignore[assignment]


def write_test_model(repo: Path, name: str, architecture: str, tile_size: int = 64) -> Path:
    """A model folder using a test architecture (an empty weights file: it needs none)."""
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.pth").write_bytes(b"")
    (folder / "config.yaml").write_text(
        f"architecture: {architecture}\nbackends: [test]\n"
        f"tiling:\n  tile_size: {tile_size}\n  overlap: 8\n  batch: 1\n"
    )
    return folder


if __name__ == "__main__":
    import faulthandler
    import signal

    from service.cli import main

    faulthandler.register(signal.SIGUSR1)  # a hung test worker can be asked where it is
    install()
    sys.exit(main(sys.argv[1:]))
