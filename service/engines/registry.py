"""Choosing and opening an engine for a model: a table lookup, not an if/elif ladder.

``BACKENDS`` maps ``(architecture, backend)`` to a factory. A model's ``config.yaml``
lists backends in order of preference; ``HDR_ENGINE`` (or ``--engine``) forces one. The
first that opens serves; each one skipped is logged with its reason.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.engines.base import Engine
from service.engines.cache import engine_dir
from service.engines.tiling import TilePlan
from service.errors import EngineUnavailable
from service.model_repo import ModelSpec, checkpoint_spec, model_spec

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec, Settings], Engine]


def _precision(spec: ModelSpec, settings: Settings) -> str:
    """``HDR_PRECISION`` wins over config.yaml unless it is ``auto``."""
    return settings.precision if settings.precision != "auto" else spec.precision


def _weights(spec: ModelSpec) -> Path:
    if spec.weights is None:
        raise EngineUnavailable(f"model {spec.name!r} has no weights")
    return spec.weights


def _fp16_gated(
    spec: ModelSpec, settings: Settings, build: Callable[[str], Engine], precision: str
) -> Engine:
    """``build(precision)``, except that fp16 serves only where it passes the parity check
    against the fp32 torch model; below it, ``build("bf16")`` serves and says why."""
    engine = build(precision)
    if engine.precision != "fp16":
        return engine
    from service.engines.parity import FP16_MIN_PSNR_MU_DB, parity_db, probe_inputs
    from service.engines.torch_engine import TorchEngine

    reference = TorchEngine.from_checkpoint(_weights(spec), settings.device, "fp32")
    score = parity_db(engine, reference, probe_inputs())
    engine.parity_db = score  # type: ignore[attr-defined]
    if score >= FP16_MIN_PSNR_MU_DB:
        log.info("fp16 parity %.1f dB PSNR-mu against fp32: serving fp16", score)
        return engine
    log.warning(
        "fp16 parity %.1f dB PSNR-mu is below %.0f dB: serving bf16 instead",
        score,
        FP16_MIN_PSNR_MU_DB,
    )
    fallback = build("bf16")
    fallback.fallback_reason = (  # type: ignore[attr-defined]
        f"fp16 parity {score:.1f} dB < {FP16_MIN_PSNR_MU_DB:.0f} dB"
    )
    return fallback


def _torch_afunet(spec: ModelSpec, settings: Settings) -> Engine:
    from service.engines.torch_engine import TorchEngine

    def build(precision: str) -> TorchEngine:
        return TorchEngine.from_checkpoint(
            _weights(spec),
            settings.device,
            precision,
            compile_model=settings.torch_compile,
            cuda_graphs=settings.cuda_graphs,
        )

    engine = _fp16_gated(spec, settings, build, _precision(spec, settings))
    if engine.precision == "bf16" and engine.device == "cpu":
        return _cpu_bf16_gated(engine, build)
    return engine


#: Probe size of the CPU bf16 parity check: two small scenes keep it to a few seconds.
CPU_PARITY_PROBE = 128


def _cpu_bf16_gated(engine: Engine, build: Callable[[str], Engine]) -> Engine:
    """A CPU bf16 engine serves only where it passes the same parity check as fp16 on a
    GPU; below it, fp32 serves and says why."""
    from service.engines.parity import FP16_MIN_PSNR_MU_DB, parity_db, probe_inputs

    reference = build("fp32")
    score = parity_db(engine, reference, probe_inputs(CPU_PARITY_PROBE, CPU_PARITY_PROBE))
    if score >= FP16_MIN_PSNR_MU_DB:
        log.info("CPU bf16 parity %.1f dB PSNR-mu against fp32: serving bf16", score)
        engine.parity_db = score  # type: ignore[attr-defined]
        return engine
    log.warning(
        "CPU bf16 parity %.1f dB PSNR-mu is below %.0f dB: serving fp32", score, FP16_MIN_PSNR_MU_DB
    )
    reference.fallback_reason = (  # type: ignore[attr-defined]
        f"bf16 parity {score:.1f} dB < {FP16_MIN_PSNR_MU_DB:.0f} dB"
    )
    return reference


def _onnxruntime_afunet(spec: ModelSpec, settings: Settings) -> Engine:
    from service.engines.onnxruntime_engine import OnnxRuntimeEngine

    if _precision(spec, settings) not in ("auto", "fp32"):
        raise EngineUnavailable("the onnxruntime backend runs fp32 only")
    return OnnxRuntimeEngine(_weights(spec), engine_dir(spec, settings), settings.device)


def _tensorrt_afunet(spec: ModelSpec, settings: Settings) -> Engine:
    if settings.device == "cpu":
        raise EngineUnavailable("TensorRT needs a GPU and HDR_DEVICE is cpu")
    # Looked up before importing the backend, which pulls in the ONNX export path: a CPU
    # host without TensorRT should not pay for modules it cannot use.
    if importlib.util.find_spec("tensorrt") is None:
        raise EngineUnavailable("TensorRT is not installed: No module named 'tensorrt'")
    from service.engines.tensorrt_engine import TensorRTEngine

    precision = _precision(spec, settings)

    def build(precision: str) -> TensorRTEngine:
        return TensorRTEngine(
            _weights(spec),
            engine_dir(spec, settings),
            precision=precision,
            max_batch=max(spec.tiling.batch or settings.tile_batch, 1),
        )

    return _fp16_gated(spec, settings, build, "bf16" if precision == "auto" else precision)


def _numpy_classical(spec: ModelSpec, settings: Settings) -> Engine:
    from service.engines.classical import ClassicalEngine

    return ClassicalEngine()


BACKENDS: dict[tuple[str, str], EngineFactory] = {
    ("afunet", "torch"): _torch_afunet,
    ("afunet", "onnxruntime"): _onnxruntime_afunet,
    ("afunet", "tensorrt"): _tensorrt_afunet,
    ("classical", "numpy"): _numpy_classical,
}


@dataclass
class ServedModel:
    """A model opened for serving: its spec, its engine and the tile geometry it uses."""

    spec: ModelSpec
    engine: Engine
    tile_size: int
    tile_overlap: int
    tile_batch: int
    tile_source: str = "config"
    """``config`` (config.yaml / settings) or ``autotuned`` (measured at start-up)."""

    def plan(self, height: int, width: int, tile_size: int | None = None) -> TilePlan:
        """The tile plan for a frame; ``tile_size`` overrides the model's (0: no tiling)."""
        size = self.tile_size if tile_size is None else tile_size
        return TilePlan.build(height, width, size or None, self.tile_overlap if size else 0)

    def describe(self) -> dict[str, object]:
        """What ``GET /v1/models`` and the metrics report about this model."""
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "architecture": self.spec.architecture,
            "backend": self.engine.backend,
            "precision": self.engine.precision,
            "device": self.engine.device,
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "tile_batch": self.tile_batch,
            "tile_source": self.tile_source,
            "precision_note": _precision_note(self.engine),
        }


def _precision_note(engine: Engine) -> str | None:
    """Why the precision is what it is, where a parity check or fallback decided it."""
    reason = getattr(engine, "fallback_reason", None)
    if reason:
        return f"serving {engine.precision}: {reason}"
    score = getattr(engine, "parity_db", None)
    return None if score is None else f"{engine.precision} parity {score:.1f} dB PSNR-mu vs fp32"


def open_engine(spec: ModelSpec, settings: Settings, forced: str | None = None) -> Engine:
    """The first backend of ``spec`` (or ``forced``) that opens here."""
    order = (forced,) if forced else spec.backends
    reasons = []
    for backend in order:
        factory = BACKENDS.get((spec.architecture, backend))
        if factory is None:
            reasons.append(f"{backend}: not implemented for {spec.architecture}")
            continue
        try:
            return factory(spec, settings)
        except EngineUnavailable as exc:
            reasons.append(f"{backend}: {exc.message}")
            log.warning("backend %s unavailable for %s: %s", backend, spec.name, exc.message)
        except ImportError as exc:
            reasons.append(f"{backend}: {exc}")
            log.warning("backend %s not installed for %s: %s", backend, spec.name, exc)
    raise EngineUnavailable(f"no backend can serve {spec.name!r}: " + "; ".join(reasons))


def load_model(
    settings: Settings, name: str | None = None, weights: Path | None = None
) -> ServedModel:
    """Resolve ``name`` (default: ``settings.default_model``) and open its engine.

    ``weights`` replaces the repository's checkpoint (the CLI's ``--checkpoint``).
    """
    name = name or settings.default_model
    if weights is not None:
        spec = checkpoint_spec(weights, settings.model_repo, name)
    else:
        spec = model_spec(settings.model_repo, name)
    forced = settings.engine
    if forced and (spec.architecture, forced) not in BACKENDS:
        # HDR_ENGINE picks among AFUNet's backends; a weight-free model has its own.
        log.info(
            "HDR_ENGINE=%s does not apply to %s; using its configured backends", forced, spec.name
        )
        forced = None
    engine = open_engine(spec, settings, forced)
    tiling = spec.tiling
    served = ServedModel(
        spec=spec,
        engine=engine,
        tile_size=tiling.tile_size or settings.tile_size,
        tile_overlap=tiling.overlap if tiling.overlap is not None else settings.tile_overlap,
        tile_batch=tiling.batch or settings.tile_batch,
    )
    on_gpu = "cuda" in str(engine.device)
    if tiling.autotune == "always" or (tiling.autotune == "gpu" and on_gpu):
        from service.engines.autotune import autotune, candidate_plans

        choice = autotune(engine, candidate_plans(served.tile_size))
        served.tile_size, served.tile_batch = choice.tile, choice.batch
        served.tile_source = "autotuned"
        log.info(
            "tile plan for %s on %s: %d px x %d (%.2f MP/s)",
            spec.name,
            engine.device,
            choice.tile,
            choice.batch,
            choice.megapixels_per_s,
        )
    return served
