"""Reading the deployment files the way their tools do: Dockerfile, .dockerignore, compose
interpolation, kustomize (through kubectl's built-in kustomize), env files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import dockerfile
import yaml

from service.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
#: The Dockerfile's final targets and the hdr-service command each runs.
TARGETS = {"api": "api", "worker": "worker", "worker-cpu": "worker"}


def tool(name: str) -> str | None:
    """An executable on PATH or beside this interpreter: the dev extra installs locust and
    hadolint into the venv's bin, which `make test` does not put on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


KUBECTL = tool("kubectl")


def setting_fields() -> dict[str, Any]:
    """Settings field name -> its default (default factories called)."""
    out = {}
    for name, info in Settings.model_fields.items():
        out[name] = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    return out


# ---------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    """One FROM ... AS name stage of the Dockerfile."""

    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction.upper()]

    def env(self) -> dict[str, str]:
        """ENV of this stage (KEY=VALUE pairs)."""
        out: dict[str, str] = {}
        for command in self.all("ENV"):
            values = list(command.value)
            for key, value in zip(values[::2], values[1::2], strict=True):
                out[key] = value
        return out


@cache
def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            value = command.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else value[0]
            current = found[name] = Stage(name, value[0])
        elif current is not None:
            current.commands.append(command)
    return found


def global_args() -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults."""
    out = {}
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            key, _, value = command.value[0].partition("=")
            out[key] = value
    return out


def copy_sources(command: dockerfile.Command) -> list[str]:
    """The build-context sources of a COPY (none for COPY --from)."""
    if any(flag.startswith("--from") for flag in command.flags):
        return []
    return list(command.value[:-1])


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go's filepath.Match plus ``**``) as a regex."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) in file order, as Docker reads .dockerignore."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:] if exception else line
        rules.append((exception, _glob_regex(pattern.strip("/"))))
    return rules


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (relative, a file) into the build context.

    Docker's rule: the last pattern matching the path or one of its parent folders wins.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for exception, pattern in dockerignore_rules():
        if any(pattern.match(candidate) for candidate in candidates):
            included = exception
    return included


# ---------------------------------------------------------------------- compose

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def compose_document() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def interpolate(value: Any, environ: dict[str, str] | None = None) -> Any:
    """``value`` with ${VAR}, ${VAR:-default} resolved as compose does (unset: default)."""
    environ = environ or {}
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in environ and (environ[name] or op != ":-"):
            return environ[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"compose needs {name}: {arg}")
        return ""

    return _VARIABLE.sub(resolve, value)


def compose_default(value: Any) -> tuple[bool, str | None]:
    """For ``${VAR:-default}``: (True, default); for anything else (False, None)."""
    if not isinstance(value, str):
        return False, None
    match = _VARIABLE.fullmatch(value)
    if match is None or match["op"] != ":-":
        return False, None
    return True, match["arg"]


# ---------------------------------------------------------------------- env files


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, # comments (kustomize's configMapGenerator `envs` format)."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value
    return out


def redis_directives(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key.lower()] = value.strip()
    return out


# ---------------------------------------------------------------------- kustomize


def kustomizations() -> Iterator[Path]:
    yield from sorted(K8S.rglob("kustomization.yaml"))


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/<overlay>``: every resource of the overlay."""
    if KUBECTL is None:
        raise RuntimeError("kubectl is not installed")
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize build of {overlay} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod template) of every Deployment and StatefulSet."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]


def settings_configmap(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("afunet-config")]
    assert len(maps) == 1, [d["metadata"]["name"] for d in maps]
    data: dict[str, str] = maps[0]["data"]
    return data
