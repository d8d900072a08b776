"""README.md stays true: every setting documented, the commands it names exist."""

from __future__ import annotations

import re

from service.cli import COMMANDS
from service.config import Settings
from tests.factories import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        assert f"| `HDR_{name.upper()}` |" in README, f"HDR_{name.upper()} is not documented"


def test_every_hdr_variable_the_readme_names_exists() -> None:
    named = set(re.findall(r"HDR_[A-Z_]+[A-Z]", README))
    known = {f"HDR_{name.upper()}" for name in Settings.model_fields} | {"HDR_GOLDEN_DIR"}
    assert named <= known, sorted(named - known)


def test_every_cli_command_is_documented() -> None:
    for command in COMMANDS:
        assert f"hdr-service {command}" in README


def test_quick_start_commands_exist_in_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("serve", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE)
    assert "pytest" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_benchmark_the_readme_names_exists() -> None:
    modules = set(re.findall(r"python -m benchmarks\.(\w+)", README))
    paths = set(re.findall(r"`(benchmarks/[\w/]+\.\w+)", README))
    assert {"engines", "tiling", "quality"} <= modules
    for name in modules:
        assert (REPO / "benchmarks" / f"{name}.py").is_file(), f"benchmarks.{name}"
    for path in paths:
        assert (REPO / path).is_file(), path
