"""The TensorRT backend (10.x and 11.x Python API): plan building, caching and execution.

Plans are built from the cached ONNX export of the plan's precision as strongly typed
networks: the graph's own types decide each layer's precision (TensorRT 11 removed the
FP16/BF16 builder flags and per-layer precision hints; 10.x deprecated them). An fp16 or
bf16 graph keeps LayerNorm, the residual stream and the channel attention's frame-wide
norms and softmax in fp32 (see ``onnx_export``); an fp32 plan has TF32 turned off, so fp32
means fp32. Builds use an optimisation profile over the batch axis, a workspace limit and
a persistent timing cache. A plan is specific to the GPU model, compute capability,
TensorRT version, precision, tile shape and weights, and all of these are in its file
name and in a JSON sidecar; a plan whose sidecar does not match the running GPU is
refused with a message that says what differs, instead of TensorRT's generic
deserialisation failure.

Execution uses ``execute_async_v3`` with tensor addresses bound on a CUDA stream; device
buffers are torch tensors (torch is a dependency of every worker anyway).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.engines.base import TileBatch
from service.engines.cache import safe_name, weights_digest, write_atomic
from service.engines.onnx_export import INPUT_NAME, OUTPUT_NAME
from service.engines.onnxruntime_engine import ensure_onnx
from service.errors import EngineFault, EngineUnavailable
from service.model.preprocess import build_model_input_torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_WORKSPACE_BYTES = 4 << 30


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineUnavailable(f"TensorRT is not installed: {exc}") from exc
    return trt


@dataclass(frozen=True)
class PlanKey:
    """Everything a TensorRT plan is only valid for."""

    gpu: str
    capability: str
    tensorrt: str
    precision: str
    tile_h: int
    tile_w: int
    max_batch: int
    weights: str

    def file_name(self) -> str:
        return (
            safe_name(
                "afunet",
                self.weights,
                self.gpu,
                f"sm{self.capability}",
                f"trt{self.tensorrt}",
                self.precision,
                f"{self.tile_h}x{self.tile_w}",
                f"b{self.max_batch}",
            )
            + ".plan"
        )

    def mismatch(self, other: PlanKey) -> list[str]:
        """Human-readable differences that make a plan unusable here."""
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{k} {theirs[k]!r} (this worker: {mine[k]!r})" for k in mine if mine[k] != theirs[k]
        ]


def current_key(
    trt: Any,
    precision: str,
    tile_h: int,
    tile_w: int,
    max_batch: int,
    weights: Path,
    device_index: int = 0,
) -> PlanKey:
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return PlanKey(
        gpu=torch.cuda.get_device_name(device_index),
        capability=f"{major}{minor}",
        tensorrt=str(trt.__version__),
        precision=precision,
        tile_h=tile_h,
        tile_w=tile_w,
        max_batch=max_batch,
        weights=weights_digest(weights),
    )


def build_plan(
    trt: Any,
    onnx_file: Path,
    key: PlanKey,
    opt_batch: int,
    timing_cache: Path,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> bytes:
    """Build a serialised plan for ``key`` from ``onnx_file``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode since 10.0; strong typing is opt-in on 10.x and
    # always on (the flag accepted and ignored) on 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineUnavailable(f"TensorRT cannot parse {onnx_file.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if hasattr(trt.BuilderFlag, "TF32"):  # fp32 layers stay fp32 (1e-3 off otherwise)
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    shape = (18, key.tile_h, key.tile_w)
    profile.set_shape(
        INPUT_NAME, (1, *shape), (min(opt_batch, key.max_batch), *shape), (key.max_batch, *shape)
    )
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineUnavailable(f"TensorRT failed to build a {key.precision} plan for {key}")
    write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine:
    """Runs cached (or freshly built) TensorRT plans, one per tile shape."""

    backend = "tensorrt"
    batch_invariant = False
    """A GPU batch runs as one; its kernels may depend on the batch size."""

    def __init__(
        self,
        weights: Path,
        cache: Path,
        precision: str = "bf16",
        max_batch: int = 4,
        device_index: int = 0,
        build: bool = True,
    ) -> None:
        import torch

        self._trt = _import_trt()
        if not torch.cuda.is_available():
            raise EngineUnavailable("TensorRT needs a CUDA GPU and none is available")
        if precision not in PRECISIONS:
            raise EngineUnavailable(f"unknown TensorRT precision {precision!r}")
        self.precision = precision
        self.device = f"cuda:{device_index}"
        self.parity_db: float | None = None
        """PSNR-mu against fp32 where a parity check ran (fp16)."""
        self.fallback_reason: str | None = None
        """Why this engine runs another precision than was asked for."""
        self._torch = torch
        self._weights = weights
        self._cache = cache
        self._max_batch = max_batch
        self._device_index = device_index
        self._build = build
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        self._contexts: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._stream = torch.cuda.Stream(device=device_index)
        self._lock = threading.Lock()

    # --- plans -----------------------------------------------------------------------------

    def plan_path(self, tile_h: int, tile_w: int) -> tuple[Path, PlanKey]:
        key = current_key(
            self._trt,
            self.precision,
            tile_h,
            tile_w,
            self._max_batch,
            self._weights,
            self._device_index,
        )
        return self._cache / "tensorrt" / key.file_name(), key

    def load_plan(self, path: Path, expected: PlanKey) -> Any:
        """Deserialise ``path``, refusing a plan made for another GPU or TensorRT."""
        meta_path = path.with_suffix(".json")
        if meta_path.is_file():
            recorded = PlanKey(**json.loads(meta_path.read_text()))
            differences = expected.mismatch(recorded)
            if differences:
                raise EngineUnavailable(
                    f"TensorRT plan {path.name} does not match this worker: "
                    + "; ".join(differences)
                )
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineUnavailable(
                f"TensorRT could not deserialise {path.name}: it was built for another GPU"
                f" or TensorRT version (this worker: {expected.gpu}, sm{expected.capability},"
                f" TensorRT {expected.tensorrt})"
            )
        return engine

    def prepare(self, tile_h: int, tile_w: int) -> Path:
        """Build (or find) and load the plan for this tile shape; returns its path."""
        self._context(tile_h, tile_w)
        return self.plan_path(tile_h, tile_w)[0]

    def _context(self, tile_h: int, tile_w: int) -> tuple[Any, Any]:
        with self._lock:
            found = self._contexts.get((tile_h, tile_w))
            if found is not None:
                return found
            path, key = self.plan_path(tile_h, tile_w)
            if not path.is_file():
                if not self._build:
                    raise EngineUnavailable(f"no TensorRT plan {path} and building is disabled")
                onnx_file = ensure_onnx(self._cache, self._weights, tile_h, tile_w, self.precision)
                log.info("building TensorRT %s plan for %dx%d tiles", key.precision, tile_w, tile_h)
                plan = build_plan(
                    self._trt,
                    onnx_file,
                    key,
                    self._max_batch,
                    self._cache / "tensorrt" / "timing.cache",
                )
                write_atomic(path, plan)
                write_atomic(path.with_suffix(".json"), json.dumps(asdict(key)).encode())
            engine = self.load_plan(path, key)
            context = engine.create_execution_context()
            self._contexts[(tile_h, tile_w)] = (engine, context)
            return engine, context

    # --- running ---------------------------------------------------------------------------

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.run(TileBatch.blank(batch, tile_h, tile_w))

    def run(self, tiles: TileBatch) -> np.ndarray:
        torch = self._torch
        batch, tile_h, tile_w = tiles.size, tiles.height, tiles.width
        if batch > self._max_batch:
            step = self._max_batch
            return np.concatenate(
                [
                    self.run(TileBatch(tiles.frames[i : i + step], tiles.evs))
                    for i in range(0, batch, step)
                ]
            )
        engine, context = self._context(tile_h, tile_w)
        device = torch.device(self.device)
        frames = torch.from_numpy(np.ascontiguousarray(tiles.frames)).to(device)
        x = build_model_input_torch(frames, tiles.evs).contiguous()
        if engine.get_tensor_dtype(INPUT_NAME) != self._trt.float32:
            raise EngineFault(f"TensorRT plan expects {engine.get_tensor_dtype(INPUT_NAME)} input")
        out = torch.empty((batch, 3, tile_h, tile_w), dtype=torch.float32, device=device)
        context.set_input_shape(INPUT_NAME, tuple(x.shape))
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream(device))
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise EngineFault("TensorRT execute_async_v3 failed")
        self._stream.synchronize()
        return out.cpu().numpy()
