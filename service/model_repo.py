"""The model repository on disk (Triton-style; ARCHITECTURE section 5).

``<repo>/<name>/config.yaml`` describes a model (architecture, preferred backends,
precision, tiling); ``<repo>/<name>/<version>/`` holds the weights an operator drops in
(``model.pth``) and the engines built from them. The highest numeric version that has
weights serves, unless ``config.yaml`` pins one. Weight-free architectures (``classical``)
need no version folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.errors import EngineUnavailable

WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "config.yaml"
#: Architectures that run without weights.
WEIGHT_FREE = frozenset({"classical"})
#: The weight-free model every deployment can serve (service/engines/classical.py): jobs
#: naming no model run on it where HDR_DEFAULT_MODEL cannot open at all (no weights).
FALLBACK_MODEL = "classical"


@dataclass(frozen=True)
class TilingConfig:
    """Tile geometry config.yaml gives; ``None``: not given there (see ``resolve_serving``
    in ``service.engines.registry`` for which value serves)."""

    tile_size: int | None = None
    overlap: int | None = None
    batch: int | None = None
    autotune: str = "gpu"
    """Choose tile size (>= tile_size) and batch by measurement at start-up: ``gpu`` (on
    CUDA devices only: seconds there, minutes on a CPU), ``always`` or ``off``."""

    @classmethod
    def parse(cls, raw: object, where: Path) -> TilingConfig:
        if not raw:
            return cls()
        if not isinstance(raw, dict):
            raise EngineUnavailable(f"{where}: tiling must be a mapping")
        values = dict(raw)
        autotune = str(values.pop("autotune", "gpu")).lower()
        if autotune in ("true", "yes", "on"):
            autotune = "always"
        if autotune in ("false", "no"):
            autotune = "off"
        if autotune not in ("gpu", "always", "off"):
            raise EngineUnavailable(f"{where}: tiling.autotune must be gpu, always or off")
        unknown = set(values) - {"tile_size", "overlap", "batch"}
        if unknown:
            raise EngineUnavailable(f"{where}: unknown tiling keys {sorted(unknown)}")
        try:
            return cls(**{k: int(v) for k, v in values.items()}, autotune=autotune)
        except (TypeError, ValueError) as exc:
            raise EngineUnavailable(f"{where}: tiling values must be integers: {exc}") from exc


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: what it is and where its files are."""

    name: str
    architecture: str
    version: int | None
    """Version folder in use; None for a weight-free model."""
    directory: Path
    """``<repo>/<name>/<version>`` (engines are cached here), or ``<repo>/<name>``."""
    weights: Path | None
    backends: tuple[str, ...] | None = None
    """config.yaml's ``backends``; ``None``: not given there."""
    precision: str | None = None
    """config.yaml's ``precision``; ``None``: not given there."""
    tiling: TilingConfig = field(default_factory=TilingConfig)


def versions(repo: Path, name: str) -> list[int]:
    """Numeric version folders of ``name``, ascending."""
    root = repo / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def find_checkpoint(repo: Path, name: str, pinned: int | None = None) -> Path:
    """The weights of ``pinned`` or else the highest version of ``name`` that has any."""
    candidates = [pinned] if pinned is not None else list(reversed(versions(repo, name)))
    for version in candidates:
        path = repo / name / str(version) / WEIGHTS_FILE
        if path.is_file():
            return path
    where = repo / name / (str(pinned) if pinned is not None else "<version>") / WEIGHTS_FILE
    raise EngineUnavailable(
        f"no weights for model {name!r}: put the checkpoint at {where} or pass --checkpoint"
    )


def _read_config(repo: Path, name: str) -> dict[str, Any]:
    path = repo / name / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise EngineUnavailable(f"{path}: cannot read model config: {exc}") from exc
    if not isinstance(data, dict):
        raise EngineUnavailable(f"{path}: model config must be a mapping")
    return data


def _backends(config: dict[str, Any], where: Path) -> tuple[str, ...] | None:
    raw = config.get("backends")
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise EngineUnavailable(f"{where}: backends must be a non-empty list")
    return tuple(str(b) for b in raw)


def _precision(config: dict[str, Any]) -> str | None:
    raw = config.get("precision")
    return None if raw is None else str(raw)


def model_spec(repo: Path, name: str) -> ModelSpec:
    """Resolve ``name`` in ``repo``; ``EngineUnavailable`` when it cannot serve."""
    config = _read_config(repo, name)
    if not config and not (repo / name).is_dir():
        raise EngineUnavailable(
            f"model {name!r} is not in the model repository {repo}"
            f" (for AFUNet weights: {repo / name / '<version>' / WEIGHTS_FILE})"
        )
    where = repo / name / CONFIG_FILE
    architecture = str(config.get("architecture", name))
    backends = _backends(config, where)
    tiling = TilingConfig.parse(config.get("tiling"), where)
    precision = _precision(config)
    if architecture in WEIGHT_FREE:
        return ModelSpec(name, architecture, None, repo / name, None, backends, precision, tiling)
    pinned = config.get("version")
    weights = find_checkpoint(repo, name, int(pinned) if pinned is not None else None)
    return ModelSpec(
        name,
        architecture,
        int(weights.parent.name),
        weights.parent,
        weights,
        backends,
        precision,
        tiling,
    )


def checkpoint_spec(path: Path, repo: Path, name: str = "afunet") -> ModelSpec:
    """A spec for weights given explicitly (``--checkpoint``), using ``name``'s config."""
    if not path.is_file():
        raise EngineUnavailable(f"checkpoint {path} does not exist")
    config = _read_config(repo, name)
    where = repo / name / CONFIG_FILE
    return ModelSpec(
        name=name,
        architecture=str(config.get("architecture", "afunet")),
        version=None,
        directory=path.parent,
        weights=path,
        backends=_backends(config, where),
        precision=_precision(config),
        tiling=TilingConfig.parse(config.get("tiling"), where),
    )


def model_names(repo: Path) -> list[str]:
    """Every model folder in the repository (servable or not)."""
    if not repo.is_dir():
        return []
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
