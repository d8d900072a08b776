"""Choosing and opening an engine for a model: a table lookup, not an if/elif ladder.

``BACKENDS`` maps ``(architecture, backend)`` to a factory. A model's ``config.yaml``
lists backends in order of preference; ``HDR_ENGINE`` (or ``--engine``) forces one. The
first that opens serves; each one skipped is logged with its reason.

Every serving setting that ``config.yaml`` can also hold (backends, precision, tile size,
overlap and batch) follows one rule, applied in ``resolve_serving`` and nowhere else: an
``HDR_*`` variable that is set wins, then the model's config.yaml, then the built-in
default of ``Settings``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, get_args

from service.config import Settings
from service.engines.base import Engine
from service.engines.cache import engine_dir
from service.engines.tiling import TilePlan
from service.errors import EngineUnavailable
from service.model_repo import CONFIG_FILE, ModelSpec, checkpoint_spec, model_spec

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a serving setting's value came from: an ``HDR_*`` variable that is set (or the
#: CLI flag standing for it), the model's config.yaml, or the built-in default.
Source = Literal["environment", "config", "default"]
#: The settings config.yaml can also hold, each with its place in config.yaml.
CONFIG_SETTINGS: Mapping[str, str] = {
    "engine": "backends",
    "precision": "precision",
    "tile_size": "tiling.tile_size",
    "tile_overlap": "tiling.overlap",
    "tile_batch": "tiling.batch",
}
#: Backends tried when neither HDR_ENGINE nor config.yaml names any.
DEFAULT_BACKENDS = ("torch",)
PRECISIONS: tuple[str, ...] = get_args(Settings.model_fields["precision"].annotation)


@dataclass(frozen=True)
class ServingConfig:
    """The serving settings of one model, as ``resolve_serving`` decided them."""

    backends: tuple[str, ...]
    """Backends to try in order (one when HDR_ENGINE forces it)."""
    precision: str
    tile_size: int
    tile_overlap: int
    tile_batch: int
    autotune: str
    """config.yaml's ``tiling.autotune`` (gpu, always, off); it has no variable."""
    sources: Mapping[str, Source] = field(default_factory=dict)
    """Per ``CONFIG_SETTINGS`` name, where its value came from."""

    def pinned(self, setting: str) -> bool:
        """Whether an HDR_* variable (or CLI flag) set it: start-up tuning leaves it alone."""
        return self.sources.get(setting) == "environment"


EngineFactory = Callable[[ModelSpec, ServingConfig, Settings], Engine]


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


def _torch_afunet(spec: ModelSpec, serving: ServingConfig, settings: Settings) -> Engine:
    from service.engines.torch_engine import TorchEngine

    def build(precision: str) -> TorchEngine:
        return TorchEngine.from_checkpoint(
            _weights(spec),
            settings.device,
            precision,
            compile_model=settings.torch_compile,
            cuda_graphs=settings.cuda_graphs,
        )

    engine = _fp16_gated(spec, settings, build, serving.precision)
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


def _onnxruntime_afunet(spec: ModelSpec, serving: ServingConfig, settings: Settings) -> Engine:
    from service.engines.onnxruntime_engine import OnnxRuntimeEngine

    if serving.precision not in ("auto", "fp32"):
        raise EngineUnavailable("the onnxruntime backend runs fp32 only")
    return OnnxRuntimeEngine(_weights(spec), engine_dir(spec, settings), settings.device)


def _tensorrt_afunet(spec: ModelSpec, serving: ServingConfig, settings: Settings) -> Engine:
    if settings.device == "cpu":
        raise EngineUnavailable("TensorRT needs a GPU and HDR_DEVICE is cpu")
    # Looked up before importing the backend, which pulls in the ONNX export path: a CPU
    # host without TensorRT should not pay for modules it cannot use.
    if importlib.util.find_spec("tensorrt") is None:
        raise EngineUnavailable("TensorRT is not installed: No module named 'tensorrt'")
    from service.engines.tensorrt_engine import TensorRTEngine

    precision = serving.precision

    def build(precision: str) -> TensorRTEngine:
        return TensorRTEngine(
            _weights(spec),
            engine_dir(spec, settings),
            precision=precision,
            max_batch=serving.tile_batch,
        )

    return _fp16_gated(spec, settings, build, "bf16" if precision == "auto" else precision)


def _numpy_classical(spec: ModelSpec, serving: ServingConfig, settings: Settings) -> Engine:
    from service.engines.classical import ClassicalEngine

    return ClassicalEngine()


BACKENDS: dict[tuple[str, str], EngineFactory] = {
    ("afunet", "torch"): _torch_afunet,
    ("afunet", "onnxruntime"): _onnxruntime_afunet,
    ("afunet", "tensorrt"): _tensorrt_afunet,
    ("classical", "numpy"): _numpy_classical,
}


def resolve_serving(spec: ModelSpec, settings: Settings) -> ServingConfig:
    """The one precedence rule for every setting config.yaml can also hold.

    An ``HDR_*`` variable that is set (``Settings.model_fields_set``: given explicitly,
    which includes the CLI flags that stand for them) wins; else the model's config.yaml;
    else the built-in default of ``Settings``. One rule because two (config.yaml over the
    tile variables, the variable over config.yaml for precision) made the variables a
    deployment sets do nothing without a word. The combined tile geometry is checked
    here, where it is first known, naming where each value came from.
    """
    sources: dict[str, Source] = {}
    explicit = settings.model_fields_set

    def pick(setting: str, current: T, configured: T | None) -> T:
        if setting in explicit:
            sources[setting] = "environment"
            return current
        if configured is not None:
            sources[setting] = "config"
            return configured
        sources[setting] = "default"
        return current  # not given, so the field's default

    forced = settings.engine if "engine" in explicit else None
    known = sorted({backend for _, backend in BACKENDS})
    if forced and forced not in known:
        raise EngineUnavailable(
            f"HDR_ENGINE (or --engine) {forced!r} names no backend; known: {', '.join(known)}"
        )
    if forced and (spec.architecture, forced) not in BACKENDS:
        # HDR_ENGINE picks among AFUNet's backends; a weight-free model has its own.
        log.info(
            "HDR_ENGINE=%s does not apply to %s; using its configured backends", forced, spec.name
        )
        forced = None
    if forced:
        backends: tuple[str, ...] = (forced,)
        sources["engine"] = "environment"
    elif spec.backends:
        backends, sources["engine"] = spec.backends, "config"
    else:
        backends, sources["engine"] = DEFAULT_BACKENDS, "default"

    tiling = spec.tiling
    serving = ServingConfig(
        backends=backends,
        precision=pick("precision", str(settings.precision), spec.precision),
        tile_size=pick("tile_size", settings.tile_size, tiling.tile_size),
        tile_overlap=pick("tile_overlap", settings.tile_overlap, tiling.overlap),
        tile_batch=pick("tile_batch", settings.tile_batch, tiling.batch),
        autotune=tiling.autotune,
        sources=sources,
    )
    _check_serving(spec, serving)
    return serving


def _check_serving(spec: ModelSpec, serving: ServingConfig) -> None:
    """Refuse a combination no single source could be checked for on its own."""

    def named(setting: str) -> str:
        value = getattr(serving, setting)
        where = {
            "environment": f"HDR_{setting.upper()} or --{setting.replace('_', '-')}",
            "config": f"{spec.name}/{CONFIG_FILE} {CONFIG_SETTINGS[setting]}",
            "default": "default",
        }[serving.sources[setting]]
        return f"{setting} {value} ({where})"

    problems = []
    if serving.precision not in PRECISIONS:
        problems.append(f"{named('precision')} is not one of {', '.join(PRECISIONS)}")
    if serving.tile_size < 16 or serving.tile_size % 8:
        problems.append(f"{named('tile_size')} must be a multiple of 8, at least 16")
    if serving.tile_overlap < 0 or 2 * serving.tile_overlap >= serving.tile_size:
        problems.append(
            f"{named('tile_overlap')} must be at least 0 and less than half"
            f" the {named('tile_size')}"
        )
    if serving.tile_batch < 1:
        problems.append(f"{named('tile_batch')} must be at least 1")
    if problems:
        raise EngineUnavailable(f"model {spec.name!r}: " + "; ".join(problems))


@dataclass
class ServedModel:
    """A model opened for serving: its spec, its engine and the tile geometry it uses."""

    spec: ModelSpec
    engine: Engine
    tile_size: int
    tile_overlap: int
    tile_batch: int
    sources: dict[str, str] = field(default_factory=dict)
    """Per ``CONFIG_SETTINGS`` name: environment, config or default (``resolve_serving``),
    or autotuned for the tile size and batch measured at start-up."""

    @property
    def tile_source(self) -> str:
        """Where the tile geometry comes from: autotuned, or the tile size's source."""
        if "autotuned" in (self.sources.get("tile_size"), self.sources.get("tile_batch")):
            return "autotuned"
        return self.sources.get("tile_size", "default")

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
            "sources": dict(self.sources),
            "precision_note": _precision_note(self.engine),
        }


def _precision_note(engine: Engine) -> str | None:
    """Why the precision is what it is, where a parity check or fallback decided it."""
    reason = getattr(engine, "fallback_reason", None)
    if reason:
        return f"serving {engine.precision}: {reason}"
    score = getattr(engine, "parity_db", None)
    return None if score is None else f"{engine.precision} parity {score:.1f} dB PSNR-mu vs fp32"


def open_engine(spec: ModelSpec, serving: ServingConfig, settings: Settings) -> Engine:
    """The first of ``serving.backends`` that opens here."""
    reasons = []
    for backend in serving.backends:
        factory = BACKENDS.get((spec.architecture, backend))
        if factory is None:
            reasons.append(f"{backend}: not implemented for {spec.architecture}")
            continue
        try:
            return factory(spec, serving, settings)
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
    serving = resolve_serving(spec, settings)
    engine = open_engine(spec, serving, settings)
    served = ServedModel(
        spec=spec,
        engine=engine,
        tile_size=serving.tile_size,
        tile_overlap=serving.tile_overlap,
        tile_batch=serving.tile_batch,
        sources=dict(serving.sources),
    )
    on_gpu = "cuda" in str(engine.device)
    tune_tile, tune_batch = not serving.pinned("tile_size"), not serving.pinned("tile_batch")
    wanted = serving.autotune == "always" or (serving.autotune == "gpu" and on_gpu)
    if wanted and (tune_tile or tune_batch):
        from service.engines.autotune import autotune, candidate_plans

        # A size or batch set by its variable is used as given; only the rest is measured.
        candidates = candidate_plans(
            served.tile_size,
            tune_tile=tune_tile,
            batch=None if tune_batch else served.tile_batch,
        )
        choice = autotune(engine, candidates)
        served.tile_size, served.tile_batch = choice.tile, choice.batch
        for setting, tuned in (("tile_size", tune_tile), ("tile_batch", tune_batch)):
            if tuned:
                served.sources[setting] = "autotuned"
        log.info(
            "tile plan for %s on %s: %d px x %d (%.2f MP/s)",
            spec.name,
            engine.device,
            choice.tile,
            choice.batch,
            choice.megapixels_per_s,
        )
    return served
