"""One rule for every serving setting: a set HDR_* variable, then config.yaml, then default."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.config import DEFAULT_TILE_BATCH, DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, Settings
from service.engines.registry import CONFIG_SETTINGS, load_model, resolve_serving
from service.errors import EngineUnavailable
from service.model_repo import model_spec
from tests.factories import REPO

#: Per setting: the config.yaml lines giving it, the value they give, a variable's text and
#: the value it gives, and the built-in default (what serves with neither).
CASES = {
    "engine": (
        "backends: [onnxruntime, torch]",
        ("onnxruntime", "torch"),
        "tensorrt",
        ("tensorrt",),
        ("torch",),
    ),
    "precision": ("precision: fp32", "fp32", "fp16", "fp16", "auto"),
    "tile_size": ("tiling: {tile_size: 128}", 128, "96", 96, DEFAULT_TILE_SIZE),
    "tile_overlap": ("tiling: {overlap: 8}", 8, "4", 4, DEFAULT_TILE_OVERLAP),
    "tile_batch": ("tiling: {batch: 4}", 4, "3", 3, DEFAULT_TILE_BATCH),
}
#: Where each setting's resolved value is read from ``ServingConfig``.
FIELD = {"engine": "backends"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No HDR_* variable of a serving setting leaks in from the machine running the tests."""
    for setting in CONFIG_SETTINGS:
        monkeypatch.delenv(f"HDR_{setting.upper()}", raising=False)
    return monkeypatch


def _repo(root: Path, config: str) -> Path:
    """A repository whose afunet config.yaml holds ``config`` (weights: an empty stand-in;
    resolving settings never opens them)."""
    (root / "afunet" / "1").mkdir(parents=True)
    (root / "afunet" / "1" / "model.pth").write_bytes(b"\0")
    (root / "afunet" / "config.yaml").write_text(f"architecture: afunet\n{config}\n")
    return root


def test_every_setting_config_yaml_can_hold_is_covered() -> None:
    assert set(CASES) == set(CONFIG_SETTINGS)
    assert set(CONFIG_SETTINGS) <= set(Settings.model_fields)


@pytest.mark.parametrize("setting", sorted(CASES))
def test_a_set_variable_wins_over_config_yaml(setting, tmp_path, clean_env) -> None:
    config, _, text, value, _ = CASES[setting]
    clean_env.setenv(f"HDR_{setting.upper()}", text)
    serving = resolve_serving(model_spec(_repo(tmp_path, config), "afunet"), Settings())
    assert getattr(serving, FIELD.get(setting, setting)) == value
    assert serving.sources[setting] == "environment"


@pytest.mark.parametrize("setting", sorted(CASES))
def test_config_yaml_wins_over_the_default(setting, tmp_path, clean_env) -> None:
    config, value, _, _, default = CASES[setting]
    assert value != default
    serving = resolve_serving(model_spec(_repo(tmp_path, config), "afunet"), Settings())
    assert getattr(serving, FIELD.get(setting, setting)) == value
    assert serving.sources[setting] == "config"


@pytest.mark.parametrize("setting", sorted(CASES))
def test_the_default_serves_when_neither_gives_it(setting, tmp_path, clean_env) -> None:
    default = CASES[setting][4]
    serving = resolve_serving(model_spec(_repo(tmp_path, ""), "afunet"), Settings())
    assert getattr(serving, FIELD.get(setting, setting)) == default
    assert serving.sources[setting] == "default"


def test_a_variable_set_to_the_default_value_still_wins(tmp_path, clean_env) -> None:
    clean_env.setenv("HDR_TILE_SIZE", str(DEFAULT_TILE_SIZE))
    clean_env.setenv("HDR_PRECISION", "auto")
    spec = model_spec(_repo(tmp_path, "precision: fp32\ntiling: {tile_size: 64}"), "afunet")
    serving = resolve_serving(spec, Settings())
    assert (serving.tile_size, serving.precision) == (DEFAULT_TILE_SIZE, "auto")


def test_a_cli_flag_counts_as_its_variable(tmp_path, clean_env) -> None:
    """The offline commands copy their flags into the settings (``open_model``)."""
    clean_env.setenv("HDR_TILE_SIZE", "96")
    spec = model_spec(_repo(tmp_path, "tiling: {tile_size: 64}"), "afunet")
    flagged = Settings().model_copy(update={"tile_size": 128})
    assert resolve_serving(spec, flagged).tile_size == 128


def test_a_pair_from_two_sources_is_checked_naming_both(tmp_path, clean_env) -> None:
    clean_env.setenv("HDR_TILE_OVERLAP", "32")
    spec = model_spec(_repo(tmp_path, "tiling: {tile_size: 64}"), "afunet")
    with pytest.raises(EngineUnavailable) as caught:
        resolve_serving(spec, Settings())
    message = caught.value.message
    assert "tile_overlap 32 (HDR_TILE_OVERLAP or --tile-overlap)" in message
    assert "tile_size 64 (afunet/config.yaml tiling.tile_size)" in message
    # The same overlap with a tile size that leaves room is fine: Settings alone does not
    # judge an overlap against a tile size it was not given.
    assert Settings().tile_overlap == 32


def test_config_yaml_values_are_checked_too(tmp_path, clean_env) -> None:
    spec = model_spec(_repo(tmp_path, "precision: fp64\ntiling: {tile_size: 60}"), "afunet")
    with pytest.raises(EngineUnavailable) as caught:
        resolve_serving(spec, Settings())
    assert "precision fp64 (afunet/config.yaml precision) is not one of" in caught.value.message
    assert "tile_size 60 (afunet/config.yaml tiling.tile_size) must be a multiple of 8" in (
        caught.value.message
    )


def test_served_model_reports_each_value_and_where_it_came_from(tmp_path, clean_env) -> None:
    """What a worker announces (its heartbeat, hence GET /v1/models) is what serves."""
    shutil.copytree(REPO / "model_repo" / "classical", tmp_path / "classical")
    clean_env.setenv("HDR_TILE_SIZE", "128")
    clean_env.setenv("HDR_PRECISION", "auto")
    served = load_model(Settings(model_repo=tmp_path), "classical")
    described = served.describe()
    # config.yaml says 512 / 16 / 2 and fp32 (what the numpy engine computes in anyway).
    assert (described["tile_size"], described["tile_overlap"], described["tile_batch"]) == (
        128,
        16,
        2,
    )
    assert described["tile_source"] == "environment"
    assert described["sources"] == {
        "engine": "config",
        "precision": "environment",
        "tile_size": "environment",
        "tile_overlap": "config",
        "tile_batch": "config",
    }
    plan = served.plan(300, 300)
    assert plan.tile_h == plan.tile_w == 128


def test_start_up_tuning_leaves_a_set_tile_size_alone(tmp_path, clean_env) -> None:
    (tmp_path / "classical").mkdir()
    (tmp_path / "classical" / "config.yaml").write_text(
        "architecture: classical\nbackends: [numpy]\n"
        "tiling: {tile_size: 32, overlap: 4, batch: 2, autotune: always}\n"
    )
    clean_env.setenv("HDR_TILE_SIZE", "32")
    served = load_model(Settings(model_repo=tmp_path), "classical")
    assert served.tile_size == 32
    assert served.sources["tile_size"] == "environment"
    assert served.sources["tile_batch"] == "autotuned" and served.tile_source == "autotuned"
    clean_env.setenv("HDR_TILE_BATCH", "3")
    pinned = load_model(Settings(model_repo=tmp_path), "classical")
    assert (pinned.tile_size, pinned.tile_batch, pinned.tile_source) == (32, 3, "environment")
