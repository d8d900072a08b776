"""The models a worker serves: every model of the repository that opens, warmed up.

A model that cannot open here (AFUNet before its weights are dropped in, a backend not
installed) is skipped with its reason, which the worker announces in its heartbeat so
that ``GET /v1/models`` can say why it is absent. The default model for jobs that name
none is ``settings.default_model`` when it serves, else the weight-free ``classical``,
else any model that serves (alphabetically first, so every worker picks the same one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

from service.config import Settings
from service.engines.registry import ServedModel, load_model
from service.errors import ServiceError
from service.model_repo import model_names
from service.worker.faults import is_engine_fault

log = logging.getLogger(__name__)

#: The weight-free model every deployment can serve (service/engines/classical.py).
FALLBACK_MODEL: Final = "classical"


class ModelNotServed(ServiceError):
    """A job names a model this worker does not serve: the job fails for good.

    Not retried, as a job naming an unknown model never is: the API checks names against
    the live workers' models before queuing (``ModelUnavailable``), so this is rare.
    """

    code = "model_not_served"
    http_status = 422
    retryable = False


@dataclass
class ModelSet:
    """What a worker serves and what it could not open."""

    served: dict[str, ServedModel] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Model name -> why it does not serve here."""
    preferred: str | None = None
    """The configured default model (``settings.default_model``)."""
    warmed: set[str] = field(default_factory=set)
    """Models warmed up already (:func:`warm_up` runs each once)."""

    @property
    def default(self) -> str | None:
        """The model jobs without ``model`` run on."""
        for name in (self.preferred, FALLBACK_MODEL):
            if name is not None and name in self.served:
                return name
        return min(self.served) if self.served else None

    def pick(self, requested: str | None) -> tuple[str, ServedModel]:
        """The model a job runs on; :class:`ModelNotServed` when this worker lacks it."""
        name = requested or self.default
        if name is None or name not in self.served:
            reason = self.unavailable.get(name or "", "")
            raise ModelNotServed(
                f"model {name!r} is not served by this worker"
                + (f" ({reason})" if reason else "")
                + f"; it serves: {', '.join(sorted(self.served)) or 'nothing'}"
            )
        return name, self.served[name]

    def describe(self, ready: bool) -> dict[str, dict[str, Any]]:
        """Per model, what the heartbeat announces: ``ServedModel.describe()`` and ``ready``."""
        return {name: {**model.describe(), "ready": ready} for name, model in self.served.items()}


def load_models(settings: Settings) -> ModelSet:
    """Open every model of ``settings.model_repo``; skip (and record) those that fail.

    An engine fault while opening (a broken GPU) propagates: the worker must exit.
    """
    models = ModelSet(preferred=settings.default_model)
    names = model_names(settings.model_repo)
    if not names:
        log.error("the model repository %s holds no model", settings.model_repo)
    for name in names:
        try:
            models.served[name] = load_model(settings, name)
        except Exception as exc:
            if is_engine_fault(exc):
                raise
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            models.unavailable[name] = reason
            log.warning("model %s does not serve here: %s", name, reason)
            continue
        log.info("loaded model %s: %s", name, models.served[name].describe())
    return models


def warm_up(models: ModelSet) -> None:
    """Run each model once at its serving shape; one that fails is dropped with the reason.

    The first call of an engine pays for kernel selection, allocator growth and window
    layouts; a worker only reports ready after this, so the first job is not slow.
    """
    for name, model in list(models.served.items()):
        if name in models.warmed:
            continue
        try:
            model.engine.warmup(model.tile_size, model.tile_size, model.tile_batch)
        except Exception as exc:
            if is_engine_fault(exc):
                raise
            models.unavailable[name] = f"warm-up failed: {exc}"
            del models.served[name]
            log.warning("model %s failed its warm-up: %s", name, exc)
            continue
        models.warmed.add(name)
        log.info(
            "warmed up %s at %sx%s, batch %s",
            name,
            model.tile_size,
            model.tile_size,
            model.tile_batch,
        )
