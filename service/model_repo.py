"""The model repository on disk (Triton-style; ARCHITECTURE section 5).

``<repo>/<name>/config.yaml`` describes a model; ``<repo>/<name>/<version>/`` holds the
weights an operator drops in (``model.pth``) and engines built from them. The highest
numeric version serves.
"""

from __future__ import annotations

from pathlib import Path

from .errors import EngineUnavailable

WEIGHTS_FILE = "model.pth"


def versions(repo: Path, name: str) -> list[int]:
    """Numeric version folders of ``name``, ascending."""
    root = repo / name
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def find_checkpoint(repo: Path, name: str) -> Path:
    """The weights of the highest version of ``name`` that has any."""
    for version in reversed(versions(repo, name)):
        path = repo / name / str(version) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise EngineUnavailable(
        f"no weights for model {name!r}: put the checkpoint at"
        f" {repo / name / '<version>' / WEIGHTS_FILE} or pass --checkpoint"
    )
