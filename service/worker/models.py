"""The models a worker serves: every model of the repository that opens, warmed up.

A model that cannot open here (AFUNet before its weights are dropped in, a backend not
installed) is skipped with its reason, which the worker announces in its heartbeat so
that ``GET /v1/models`` can say why it is absent. ``settings.worker_models`` narrows the
set to one pool's models. The API writes the model on every job it queues; the worker's
own default (``settings.default_model`` when it serves, else the weight-free
``classical``, else the alphabetically first) only names a record without one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from service.config import Settings
from service.engines.registry import ServedModel, load_model
from service.errors import ServiceError
from service.model_repo import FALLBACK_MODEL, model_names
from service.worker.faults import is_engine_fault

log = logging.getLogger(__name__)


class ModelNotServed(ServiceError):
    """A job names a model this worker does not serve: the job fails for good.

    Not retried, as a job naming an unknown model never is. Routing makes it a defect
    guard: a worker reads only the job streams of the models it serves, and the API
    writes the model on every job it queues.
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
    """Open every model of ``settings.model_repo`` (only those of
    ``settings.worker_models`` when set); skip (and record) those that fail.

    An engine fault while opening (a broken GPU) propagates: the worker must exit.
    """
    models = ModelSet(preferred=settings.default_model)
    names = model_names(settings.model_repo)
    if not names:
        log.error("the model repository %s holds no model", settings.model_repo)
    if settings.worker_models:  # HDR_WORKER_MODELS: this worker's pool serves only these
        for name in settings.worker_models:
            if name not in names:
                models.unavailable[name] = f"not in the model repository {settings.model_repo}"
        names = [name for name in names if name in settings.worker_models]
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
