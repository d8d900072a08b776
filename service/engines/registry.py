"""Choosing and opening an engine for a model: a table lookup, not an if/elif ladder.

``BACKENDS`` maps ``(architecture, backend)`` to a factory. A model's ``config.yaml``
lists backends in order of preference; ``HDR_ENGINE`` (or ``--engine``) forces one. The
first that opens serves; each one skipped is logged with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings
from ..errors import EngineUnavailable
from ..model_repo import ModelSpec, model_spec
from .base import Engine
from .tiling import TilePlan

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec, Settings], Engine]


def _torch_afunet(spec: ModelSpec, settings: Settings) -> Engine:
    from .torch_engine import TorchEngine

    assert spec.weights is not None
    return TorchEngine.from_checkpoint(spec.weights, settings.device)


BACKENDS: dict[tuple[str, str], EngineFactory] = {
    ("afunet", "torch"): _torch_afunet,
}


@dataclass
class ServedModel:
    """A model opened for serving: its spec, its engine and the tile geometry it uses."""

    spec: ModelSpec
    engine: Engine
    tile_size: int
    tile_overlap: int
    tile_batch: int

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
        }


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


def load_model(settings: Settings, name: str | None = None) -> ServedModel:
    """Resolve ``name`` (default: ``settings.default_model``) and open its engine."""
    spec = model_spec(settings.model_repo, name or settings.default_model)
    engine = open_engine(spec, settings, settings.engine)
    tiling = spec.tiling
    return ServedModel(
        spec=spec,
        engine=engine,
        tile_size=tiling.tile_size or settings.tile_size,
        tile_overlap=tiling.overlap if tiling.overlap is not None else settings.tile_overlap,
        tile_batch=tiling.batch or settings.tile_batch,
    )
