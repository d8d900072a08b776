"""Which models the service can run, as the live workers report it in their heartbeats.

The API never opens a model: it learns from each worker's heartbeat which models that
worker serves (``ServedModel.describe()`` each), which it could not open and why, and
whether it is ready. It also knows every model that ever had a job stream (a worker
serving it started, or a job was queued for it: ``Broker.known_models``) and lists the
model repository's folders when it can see them, so that a model nobody serves still
shows up, with the reason.

Routing a new job (:meth:`Catalog.resolve`):

- a job naming no model runs on ``HDR_DEFAULT_MODEL``, recorded on the job now; only
  where that model cannot open at all (every ready worker reports it unavailable, e.g.
  a fresh install without AFUNet weights, and none serves it) on the weight-free
  ``classical`` model, so that such an install still works. The answer depends on what
  the fleet can serve, never on which heartbeat came first; a pool that is not meant to
  serve a model says so with ``HDR_WORKER_MODELS`` (then it does not report it
  unavailable);
- a model a live worker serves is accepted (its stream is read only by such workers);
- a model nobody knows (not in the repository, no stream, no heartbeat names it) is 422;
- a known model that no live worker serves is queued or refused by
  ``HDR_UNSERVED_MODEL_POLICY``: ``queue`` (an autoscaled fleet: the waiting job is what
  makes KEDA start a worker for its model) answers 202 with a ``waiting_reason``;
  ``refuse`` (a fixed fleet, where nobody would ever take it) answers 503 with
  Retry-After, naming what is served and why the model is not;
- while no live worker has finished loading (none started yet, or all warming up), every
  known model queues under either policy: refusing would turn a rolling restart into an
  outage. Except, under ``refuse``, a job naming no model while workers are loading:
  which model it gets is only known once one is ready (a fresh install without weights
  runs it on ``classical``), so it is a 503 with a short Retry-After.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from service.api.errors import LOADING_RETRY_AFTER_SECONDS, ModelUnavailable, NoWorkerForModel
from service.api.schemas import ModelPublic
from service.config import Settings
from service.model_repo import FALLBACK_MODEL, model_names
from service.queue import Broker

ModelStatus = Literal["serving", "loading", "absent"]

#: Heartbeat ``state`` of a worker still loading or warming up its models.
STATE_LOADING: Final = "loading"


@dataclass
class _Entry:
    """What the heartbeats say about one model."""

    describe: dict[str, Any] | None = None
    workers: int = 0
    ready: bool = False
    reasons: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Route:
    """Where a new job goes: its model, and why it will wait if no worker serves it."""

    model: str
    waiting_reason: str | None = None


@dataclass
class Catalog:
    """A snapshot of the fleet's models, built per request from the heartbeats."""

    heartbeats: list[dict[str, Any]]
    repo_names: list[str]
    configured_default: str
    """``HDR_DEFAULT_MODEL``."""
    policy: Literal["queue", "refuse"] = "refuse"
    """``HDR_UNSERVED_MODEL_POLICY``."""
    stream_models: list[str] = field(default_factory=list)
    """Models that have a job stream in Redis (``Broker.known_models``)."""

    def __post_init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        for beat in self.heartbeats:
            models: Mapping[str, Any] = beat.get("models") or {}
            for name, info in models.items():
                entry = self._entries.setdefault(name, _Entry())
                entry.describe = entry.describe or dict(info)
                entry.workers += 1
                entry.ready |= bool(beat.get("ready")) and bool(info.get("ready", True))
            unavailable: Mapping[str, Any] = beat.get("unavailable") or {}
            for name, reason in unavailable.items():
                self._entries.setdefault(name, _Entry()).reasons.add(str(reason))

    @property
    def loading(self) -> bool:
        """Whether no live worker has finished loading (so nothing is known yet)."""
        return all(beat.get("state") == STATE_LOADING for beat in self.heartbeats)

    @property
    def served(self) -> list[str]:
        return sorted(name for name, entry in self._entries.items() if entry.workers)

    @property
    def default_model(self) -> str:
        """What a job naming no model runs on (see the module docstring)."""
        configured = self.configured_default
        if configured in self.served or FALLBACK_MODEL not in self.served:
            return configured
        ready = [beat for beat in self.heartbeats if beat.get("ready")]
        if ready and all(configured in (beat.get("unavailable") or {}) for beat in ready):
            return FALLBACK_MODEL
        return configured

    def known(self, name: str) -> bool:
        """Whether ``name`` is a model of this deployment, served now or not."""
        return name in self._entries or name in self.repo_names or name in self.stream_models

    def _reported(self, model: str, key: str) -> int | None:
        """An integer the serving workers reported for ``model`` (its ``describe()``)."""
        entry = self._entries.get(model)
        if entry is None or entry.describe is None:
            return None
        value = entry.describe.get(key)
        return int(value) if value is not None else None

    def tile_overlap(self, model: str) -> int | None:
        """The overlap the serving workers use for ``model``, when they reported it."""
        return self._reported(model, "tile_overlap")

    def tile_size(self, model: str) -> int | None:
        """The default tile size the serving workers use for ``model``, when reported."""
        return self._reported(model, "tile_size")

    def _reasons(self, model: str) -> str:
        """`` (why)``: what the workers report about why they cannot open ``model``, or
        nothing when none did."""
        entry = self._entries.get(model)
        return f" ({'; '.join(sorted(entry.reasons))})" if entry and entry.reasons else ""

    def waiting_reason(self, model: str) -> str | None:
        """Why a queued job of ``model`` waits beyond the queue ahead of it; None while a
        live worker serves the model."""
        if model in self.served:
            return None
        if self.heartbeats and self.loading:
            return "the workers are still loading their models"
        return (
            f"no live worker serves model {model!r}{self._reasons(model)};"
            " the job waits until one does"
        )

    def resolve(self, requested: str | None) -> Route:
        """Where a new job goes (see the module docstring).

        Raises :class:`ModelUnavailable` (422) for an unknown model, and
        :class:`NoWorkerForModel` (503) for a known one that no live worker serves under
        the ``refuse`` policy.
        """
        name = requested or self.default_model
        if name in self.served:
            return Route(name)
        available = ", ".join(self.served) or "none"
        if not self.known(name) and not (self.loading and not self.repo_names):
            where = (
                f"the model repository holds: {', '.join(self.repo_names)}"
                if self.repo_names
                else f"available: {available}"
            )
            raise ModelUnavailable(f"unknown model {name!r}; {where}")
        if requested is None and self.heartbeats and self.loading and self.policy == "refuse":
            # Which model a job naming none runs on is known once a worker has loaded
            # (HDR_DEFAULT_MODEL, or classical where that cannot open): ask again shortly
            # rather than queue it for a model this fixed fleet may never serve.
            raise NoWorkerForModel(
                "the workers are still loading their models; retry shortly, or name a model"
                " in `model`",
                retry_after=LOADING_RETRY_AFTER_SECONDS,
            )
        if self.loading or self.policy == "queue":
            return Route(name, self.waiting_reason(name))
        hint = "" if requested else " (HDR_DEFAULT_MODEL; name a served model in `model`)"
        raise NoWorkerForModel(
            f"model {name!r}{hint} is not served by any live worker{self._reasons(name)};"
            f" available: {available}"
        )

    def models(self) -> list[ModelPublic]:
        """Every model known to the workers or the repository, served ones first."""
        default = self.default_model
        names = set(self._entries) | set(self.repo_names) | set(self.stream_models)
        out = []
        for name in sorted(names, key=lambda n: (not self._entries.get(n, _Entry()).workers, n)):
            entry = self._entries.get(name, _Entry())
            status: ModelStatus
            reason: str | None
            if entry.workers:
                status = "serving" if entry.ready else "loading"
                reason = None
            elif self.heartbeats and self.loading:
                status, reason = "loading", "workers are loading their models"
            else:
                status = "absent"
                reason = "; ".join(sorted(entry.reasons)) or (
                    "no live worker" if not self.heartbeats else "no live worker serves it"
                )
            info = entry.describe or {}
            out.append(
                ModelPublic(
                    name=name,
                    status=status,
                    ready=entry.ready,
                    default=name == default,
                    version=info.get("version"),
                    architecture=info.get("architecture"),
                    backend=info.get("backend"),
                    precision=info.get("precision"),
                    precision_note=info.get("precision_note"),
                    device=info.get("device"),
                    tile_size=info.get("tile_size"),
                    tile_overlap=info.get("tile_overlap"),
                    tile_batch=info.get("tile_batch"),
                    tile_source=info.get("tile_source"),
                    sources=info.get("sources"),
                    workers=entry.workers,
                    reason=reason,
                )
            )
        return out


async def load_catalog(broker: Broker, settings: Settings) -> Catalog:
    """The catalog as of now: live heartbeats, the models with a job stream, and the
    repository's folders if visible."""
    return Catalog(
        await broker.live_workers(),
        model_names(settings.model_repo),
        settings.default_model,
        settings.unserved_model_policy,
        await broker.known_models(),
    )
