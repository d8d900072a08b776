"""``hdr-service synth`` and ``hdr-service evaluate`` end to end, on generated data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.cli import main
from service.commands.evaluate import LAYOUT_NAMES
from service.quality.datasets import LAYOUTS
from tests.factories import REPO


@pytest.fixture
def repo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run against the project's model repository, wherever pytest was started."""
    monkeypatch.setenv("HDR_MODEL_REPO", str(REPO / "model_repo"))


@pytest.fixture
def dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "synthetic"
    assert main(["synth", str(out), "--scenes", "3", "--size", "64x48", "--seed", "2"]) == 0
    assert "wrote 3 scene(s) of 64x48" in capsys.readouterr().out
    return out


def test_evaluate_prints_the_table_and_writes_json_and_csv(
    dataset: Path, tmp_path: Path, repo_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "evaluate",
            str(dataset),
            "--model",
            "classical",
            "--json",
            str(tmp_path / "scores.json"),
            "--csv",
            str(tmp_path / "scores.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "PSNR-mu   PSNR-l  SSIM-mu   SSIM-l" in out
    for name in ("001", "002", "003", "mean (3)"):
        assert name in out
    data = json.loads((tmp_path / "scores.json").read_text())
    assert [s["name"] for s in data["scenes"]] == ["001", "002", "003"]
    assert set(data["mean"]) == {"psnr_mu", "psnr_l", "ssim_mu", "ssim_l"}
    assert data["mean"]["psnr_mu"] > 30
    assert data["model"]["name"] == "classical" and data["failed"] == []
    assert (tmp_path / "scores.csv").read_text().splitlines()[-1].startswith("mean,")


def test_evaluate_goes_on_past_a_broken_scene_and_exits_1(
    dataset: Path, repo_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (dataset / "002" / "HDRImg.hdr").unlink()
    assert main(["evaluate", str(dataset), "--model", "classical", "--no-tile"]) == 1
    captured = capsys.readouterr()
    assert "001" in captured.out and "003" in captured.out and "mean (2)" in captured.out
    assert "002: scene 002: label HDRImg.hdr is missing" in captured.out


def test_evaluate_with_no_usable_scene_is_a_user_error(
    dataset: Path, repo_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for scene in dataset.iterdir():
        (scene / "exposure.txt").write_text("bright\n")
    assert main(["evaluate", str(dataset), "--model", "classical"]) == 2
    assert "no scene of" in capsys.readouterr().err


def test_evaluate_reads_the_hu_layout_by_option(
    dataset: Path, repo_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for scene in dataset.iterdir():
        (scene / "exposure.txt").rename(scene / "input_exp.txt")
        (scene / "HDRImg.hdr").rename(scene / "ref_hdr_aligned_linear.hdr")
        shutil.copy(scene / "input_1.tif", scene / "ref_1_aligned.tif")
    code = main(["evaluate", str(dataset), "--layout", "hu", "--model", "classical"])
    assert code == 0, capsys.readouterr()
    assert "hu layout" in capsys.readouterr().out


def test_evaluate_saves_predictions_in_the_formats_asked(
    dataset: Path, tmp_path: Path, repo_env: None
) -> None:
    saved = tmp_path / "pred"
    args = ["evaluate", str(dataset / "001"), "--model", "classical"]
    assert main([*args, "--save-dir", str(saved), "--save-format", "hdr,png"]) == 0
    assert sorted(p.name for p in saved.iterdir()) == ["001.hdr", "001.png"]


def test_synth_refuses_a_non_empty_folder_without_force(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["synth", str(dataset), "--scenes", "1", "--size", "32x32"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_evaluate_offers_every_layout_the_datasets_module_knows() -> None:
    assert set(LAYOUT_NAMES) == set(LAYOUTS)
