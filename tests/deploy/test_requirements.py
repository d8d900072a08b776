"""The images' requirement files stay in step with pyproject.toml, and the API image
installs everything the API process imports and nothing of the model's (torch)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.deployfiles import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

REQUIREMENTS = REPO / "docker" / "requirements"
#: Package dependencies the API image leaves out: the API process never imports them.
WORKER_ONLY = {"torch", "tqdm"}
#: Distributions an interpreter loads merely because they are installed, which the API
#: image does without: setuptools (its distutils-precedence.pth import hook) and
#: cryptography (redis.utils imports it when present, for optional features; the test
#: environment has it through moto, the S3 test server); brotli, rich and pygments (httpx,
#: the webhook dispatcher's client, imports its optional brotli decoder and its command-line
#: tool's libraries when they are installed; the test environment has them through locust,
#: schemathesis and pytest).
LOADED_WHEN_PRESENT = {"setuptools", "cryptography", "brotli", "rich", "pygments"}
#: What the `gpu` extra names -> what the GPU image installs instead (CUDA 13 TensorRT).
GPU_EXTRA_RENAMED = {"tensorrt": "tensorrt-cu13"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(name: str) -> dict[str, Requirement]:
    """canonical name -> requirement of a requirements file, following ``-r`` includes."""
    out: dict[str, Requirement] = {}
    for raw in (REQUIREMENTS / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out.update(_requirements(line[3:].strip()))
            continue
        requirement = Requirement(line)
        out[canonicalize_name(requirement.name)] = requirement
    return out


def _package_dependencies() -> dict[str, Requirement]:
    deps = (Requirement(d) for d in _pyproject()["project"]["dependencies"])
    return {canonicalize_name(r.name): r for r in deps}


def _extra(name: str) -> dict[str, Requirement]:
    deps = (Requirement(d) for d in _pyproject()["project"]["optional-dependencies"][name])
    return {canonicalize_name(r.name): r for r in deps}


def test_api_requirements_are_the_package_dependencies_less_torch() -> None:
    package = _package_dependencies()
    api = _requirements("api.txt")
    assert set(api) == set(package) - WORKER_ONLY
    for name, requirement in api.items():
        assert requirement.specifier == package[name].specifier, name


def test_worker_requirements_are_every_package_dependency() -> None:
    package = _package_dependencies()
    worker = _requirements("worker.txt")
    assert set(worker) == set(package)
    for name, requirement in worker.items():
        assert requirement.specifier == package[name].specifier, name


def test_backend_requirements_follow_the_extras() -> None:
    assert set(_requirements("cpu.txt")) == set(_extra("onnx"))
    installed = {canonicalize_name(GPU_EXTRA_RENAMED.get(n, n)) for n in _extra("gpu")}
    assert set(_requirements("gpu.txt")) == installed


def test_s3_requirements_are_the_s3_extra() -> None:
    extra = _extra("s3")
    s3 = _requirements("s3.txt")
    assert set(s3) == set(extra)
    for name, requirement in s3.items():
        assert requirement.specifier == extra[name].specifier, name


def test_constraints_pin_versions_the_package_accepts() -> None:
    ranges = {**_package_dependencies(), **_extra("onnx"), **_extra("gpu"), **_extra("s3")}
    for name, requirement in _requirements("gpu.txt").items():
        ranges.setdefault(name, requirement)
    pins = _requirements("constraints.txt")
    for name, pin in pins.items():
        (spec,) = list(pin.specifier)
        assert spec.operator == "==", f"{name}: constraints pin exact versions"
        if name in ranges:
            assert ranges[name].specifier.contains(Version(spec.version), prereleases=True), (
                f"{name}=={spec.version} is outside {ranges[name].specifier}"
            )
    every_image_package = (
        set(_requirements("worker.txt"))
        | set(_requirements("cpu.txt"))
        | set(_requirements("gpu.txt"))
        | set(_requirements("s3.txt"))
    )
    assert every_image_package <= set(pins), every_image_package - set(pins)


_API_IMPORTS = """
import json, sys
from importlib.metadata import packages_distributions
from service.cli import build_parser
build_parser()
from service.config import Settings
from service.api.app import create_app
create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
import service.commands.api, service.worker.check
import uvicorn.config, uvicorn.server, uvicorn.protocols.http.h11_impl, uvicorn.lifespan.on
tops = {name.split(".")[0] for name in sys.modules}
owners = packages_distributions()
print(json.dumps({"torch": "torch" in sys.modules,
                  "dists": sorted({d for t in tops for d in owners.get(t, [])})}))
"""


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require, as installed here (extras left out)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_api_process_imports_only_what_its_image_installs() -> None:
    """Start the API's code paths in a fresh interpreter; every third-party module it
    loads comes from api.txt (or what those require), and torch is never among them."""
    result = subprocess.run(
        [sys.executable, "-c", _API_IMPORTS],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    installed = _closure(set(_requirements("api.txt")) | set(_requirements("s3.txt")))
    installed |= {"afunet-service"}
    imported = {canonicalize_name(d) for d in report["dists"]} - LOADED_WHEN_PRESENT
    assert imported <= installed, (
        f"the API imports packages its image lacks: {imported - installed}"
    )
    for worker_only in WORKER_ONLY:
        assert worker_only not in _closure(set(_requirements("api.txt")))


def test_requirement_files_are_all_used_by_the_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    used = set(re.findall(r"/tmp/requirements/([\w.-]+\.txt)", text))
    for name in list(used):
        body = (REQUIREMENTS / name).read_text()
        used |= set(re.findall(r"^-r\s+(\S+)", body, re.MULTILINE))
    assert used == {path.name for path in REQUIREMENTS.glob("*.txt")}
