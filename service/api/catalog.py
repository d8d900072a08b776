"""Which models the service can run, as the live workers report it in their heartbeats.

The API never opens a model: it learns from each worker's heartbeat which models that
worker serves (``ServedModel.describe()`` each), which it could not open and why, whether
it is ready, and which model it runs for jobs that name none. It also lists the model
repository's folders when it can see them, so that a model nobody serves still shows up,
with the reason.

A job's ``model`` is accepted when a live worker serves it. While no worker has finished
loading (none started yet, or all still warming up) the API cannot know, so it accepts
any model the repository holds (or any well-formed name, when the repository is not
mounted on the API's host) and lets the job wait in the queue: refusing would turn a
rolling restart into an outage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from service.api.errors import ModelUnavailable
from service.api.schemas import ModelPublic
from service.config import Settings
from service.model_repo import model_names
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


@dataclass
class Catalog:
    """A snapshot of the fleet's models, built per request from the heartbeats."""

    heartbeats: list[dict[str, Any]]
    repo_names: list[str]

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
    def default_model(self) -> str | None:
        """The model the (ready, else any) live workers run for jobs naming none."""
        ranked = sorted(self.heartbeats, key=lambda beat: not beat.get("ready"))
        for beat in ranked:
            if beat.get("default_model"):
                return str(beat["default_model"])
        return None

    def tile_overlap(self, model: str | None) -> int | None:
        """The overlap the serving workers use for ``model``, when they reported it."""
        entry = self._entries.get(model or self.default_model or "")
        if entry is None or entry.describe is None:
            return None
        overlap = entry.describe.get("tile_overlap")
        return int(overlap) if overlap is not None else None

    def tile_size(self, model: str | None) -> int | None:
        """The default tile size the serving workers use for ``model``, when reported."""
        entry = self._entries.get(model or self.default_model or "")
        if entry is None or entry.describe is None:
            return None
        size = entry.describe.get("tile_size")
        return int(size) if size is not None else None

    def resolve(self, requested: str | None) -> str | None:
        """The model a new job runs on; None leaves the choice to the worker.

        Raises :class:`ModelUnavailable` (422) for a model that no live worker serves,
        listing those that are served.
        """
        if requested is None:
            return self.default_model
        if requested in self.served:
            return requested
        if self.loading:
            if not self.repo_names or requested in self.repo_names:
                return requested
            raise ModelUnavailable(
                f"unknown model {requested!r}; the model repository holds:"
                f" {', '.join(self.repo_names)}"
            )
        entry = self._entries.get(requested)
        why = f" ({'; '.join(sorted(entry.reasons))})" if entry and entry.reasons else ""
        available = ", ".join(self.served) or "none"
        raise ModelUnavailable(
            f"model {requested!r} is not served by any live worker{why}; available: {available}"
        )

    def models(self) -> list[ModelPublic]:
        """Every model known to the workers or the repository, served ones first."""
        default = self.default_model
        names = set(self._entries) | set(self.repo_names)
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
    """The catalog as of now: live heartbeats plus the repository's folders if visible."""
    return Catalog(await broker.live_workers(), model_names(settings.model_repo))
