"""Reading the deployment files the way their tools do: Dockerfile, .dockerignore, compose
interpolation, kustomize (through kubectl's built-in kustomize), env files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
#: The bucket script of compose's minio-init and of the k8s minio component's Job.
CREATE_BUCKET = K8S / "components" / "minio" / "create-bucket.sh"
#: The lifecycle rule operators give their own bucket (the in-cluster MinIO gets its own).
BUCKET_LIFECYCLE = K8S / "bucket-lifecycle.json"
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


def redis_directives(source: Path | str) -> dict[str, str]:
    """Directive -> value of a redis.conf (a file, or its text; lower-case directives)."""
    text = source.read_text() if isinstance(source, Path) else source
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key.lower()] = value.strip()
    return out


# ---------------------------------------------------------------------- bucket lifecycle


def expiry_days(ttl_seconds: int) -> int:
    """Days after which the lifecycle rule expires a job's objects: those of the service's
    own rule (:func:`service.storage.s3.lifecycle_rules`, 2 x TTL rounded up to whole
    days), which the deployment's rules must match."""
    from service.storage.s3 import lifecycle_rules as service_rules

    days: int = service_rules(ttl_seconds)[0]["Expiration"]["Days"]
    return days


def lifecycle_rules(text: str, bucket: str) -> list[dict[str, Any]]:
    """The rules of a lifecycle configuration (JSON, as `aws s3api
    put-bucket-lifecycle-configuration` and `mc ilm rule import` take it), checked against
    the S3 API model that boto3 sends requests by: a misspelt field fails here."""
    from botocore.session import get_session
    from botocore.validate import validate_parameters

    configuration = json.loads(text)
    operation = (
        get_session().get_service_model("s3").operation_model("PutBucketLifecycleConfiguration")
    )
    validate_parameters(
        {"Bucket": bucket, "LifecycleConfiguration": configuration}, operation.input_shape
    )
    rules: list[dict[str, Any]] = configuration["Rules"]
    return rules


# ---------------------------------------------------------------------- Redis sizing

#: Redis memory a job takes while its record lives (README.md, "Sizing Redis"): its state,
#: measured with MEMORY USAGE at 1.2 KiB (record, queued) to 2.5 KiB (failed: record,
#: idempotency key, stream and dead-letter entries), rounded up to 4 KiB; times a margin of
#: 2 for allocator fragmentation and long error texts.
JOB_STATE_BYTES = 4 * 1024
STATE_MARGIN = 2
#: Jobs one GPU worker finishes per second at 1000x1500 (README.md: 1 to 1.5).
JOBS_PER_SECOND_PER_WORKER = 1.5


def redis_memory_needed(workers: int, ttl_seconds: int) -> float:
    """maxmemory for the job state of one TTL window at full speed (the README formula)."""
    jobs = workers * JOBS_PER_SECOND_PER_WORKER * ttl_seconds
    return jobs * JOB_STATE_BYTES * STATE_MARGIN


# ---------------------------------------------------------------------- kustomize


def kustomizations() -> Iterator[Path]:
    yield from sorted(K8S.rglob("kustomization.yaml"))


def _kustomize(folder: Path, what: str) -> tuple[dict[str, Any], ...]:
    if KUBECTL is None:
        raise RuntimeError("kubectl is not installed")
    result = subprocess.run(
        [KUBECTL, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize build of {what} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@cache
def render(overlay: str, components: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/<overlay>``: every resource of the overlay.

    ``components`` (folders of k8s/components) are added to the overlay's `components:`
    list, as an operator includes an optional one: in a copy of the overlay's folder, whose
    paths out of the folder are rewritten to point back (kustomize only lets a folder, not
    a file, lie outside the kustomization's root, and refuses absolute paths).
    """
    source = K8S / "overlays" / overlay
    if not components:
        return _kustomize(source, overlay)
    with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
        folder = Path(tmp)
        for path in source.iterdir():
            shutil.copy(path, folder / path.name)

        def back(name: str) -> str:
            if not name.startswith(".."):
                return name
            return os.path.relpath((source / name).resolve(), folder)

        kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
        kustomization["resources"] = [back(r) for r in kustomization.get("resources", [])]
        kustomization["components"] = [back(c) for c in kustomization.get("components", [])]
        kustomization["components"] += [
            os.path.relpath(K8S / "components" / name, folder) for name in components
        ]
        (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return _kustomize(folder, f"{overlay} with {', '.join(components)}")


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod template) of every Deployment, StatefulSet and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]


def generated_configmap(docs: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    """The ConfigMap a configMapGenerator named ``name`` made (its name has a hash)."""
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].rsplit("-", 1)[0] == name]
    assert len(maps) == 1, [d["metadata"]["name"] for d in maps]
    return maps[0]


def settings_configmap(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    data: dict[str, str] = generated_configmap(docs, "afunet-config")["data"]
    return data


_UNITS = {
    "": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_QUANTITY_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
}


def redis_bytes(value: str) -> int:
    """A redis.conf memory size (``256mb``: mb = MiB, m = 10^6, case-insensitive)."""
    match = re.fullmatch(r"(\d+)([a-z]*)", value.strip().lower())
    assert match and match[2] in _UNITS, f"not a Redis memory size: {value!r}"
    return int(match[1]) * _UNITS[match[2]]


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes memory quantity (``640Mi``, ``2Gi``, ``512M``) in bytes."""
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(value).strip())
    assert match and match[2] in _QUANTITY_UNITS, f"not a memory quantity: {value!r}"
    return int(match[1]) * _QUANTITY_UNITS[match[2]]
