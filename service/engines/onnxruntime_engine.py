"""The ONNX Runtime backend (CPU; CUDA execution provider when present).

Each tile shape has its own static-shape ONNX file with a dynamic batch axis, exported on
first use from the checkpoint and cached next to it, so a second worker (or a second
``--no-tile`` run of the same frame size) starts warm.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from service.cpus import usable_cpus
from service.engines.base import TileBatch
from service.engines.cache import safe_name, weights_digest
from service.engines.onnx_export import INPUT_NAME, OPSETS, OUTPUT_NAME, export_onnx
from service.errors import EngineUnavailable

log = logging.getLogger(__name__)


def onnx_path(
    cache: Path, weights: Path, tile_h: int, tile_w: int, precision: str = "fp32"
) -> Path:
    """The cached ONNX file for these weights, tile shape and precision."""
    name = safe_name(
        "afunet",
        weights_digest(weights),
        f"{tile_h}x{tile_w}",
        precision,
        f"opset{OPSETS[precision]}",
    )
    return cache / f"{name}.onnx"


def ensure_onnx(
    cache: Path, weights: Path, tile_h: int, tile_w: int, precision: str = "fp32"
) -> Path:
    """Export the ONNX file for this shape and precision unless a matching one is cached."""
    path = onnx_path(cache, weights, tile_h, tile_w, precision)
    if not path.is_file():
        from service.model.checkpoint import load_afunet

        export_onnx(load_afunet(weights), path, tile_h, tile_w, precision)
    return path


class OnnxRuntimeEngine:
    """AFUNet through ONNX Runtime, one session per tile shape."""

    backend = "onnxruntime"
    precision = "fp32"
    batch_invariant = False
    """Not promised: the whole batch is one session run, whose kernels ONNX Runtime picks.
    (Measured on CPU, 32- and 64-px tiles in batches of 1-8: identical; not by design.)"""

    def __init__(self, weights: Path, cache: Path, device: str = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineUnavailable(f"onnxruntime is not installed: {exc}") from exc
        self._ort = ort
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise EngineUnavailable("onnxruntime has no CUDA execution provider here")
        self._providers = (["CUDAExecutionProvider"] if want_cuda else []) + [
            "CPUExecutionProvider"
        ]
        self.device = "cuda" if want_cuda else "cpu"
        self._weights = weights
        self._cache = cache
        self._sessions: dict[tuple[int, int], object] = {}
        self._lock = threading.Lock()

    def _session(self, tile_h: int, tile_w: int):
        key = (tile_h, tile_w)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                path = ensure_onnx(self._cache, self._weights, tile_h, tile_w)
                options = self._ort.SessionOptions()
                options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # The planned-pattern arena holds every intermediate of the largest run
                # at once; without it ORT reuses buffers (178 vs 262 MB at 128x128).
                options.enable_mem_pattern = False
                # ORT sizes its pool to the host's cores and spins idle threads; use the
                # CPUs this process may run on, and let idle threads sleep (as OpenMP's,
                # see engines.runtime.tune_cpu_threads).
                options.intra_op_num_threads = usable_cpus()
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = self._ort.InferenceSession(
                    str(path), sess_options=options, providers=self._providers
                )
                self._sessions[key] = session
                log.info("onnxruntime session for %dx%d tiles from %s", tile_w, tile_h, path)
        return session

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.run(TileBatch.blank(batch, tile_h, tile_w))

    def run(self, batch: TileBatch) -> np.ndarray:
        tiles = batch.model_input()
        session = self._session(batch.height, batch.width)
        return session.run([OUTPUT_NAME], {INPUT_NAME: tiles})[0]  # type: ignore[attr-defined]
