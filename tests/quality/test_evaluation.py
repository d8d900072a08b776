"""Test-set layouts, per-scene errors, the official padding, and scoring a served model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.config import Settings
from service.engines.pipeline import ModelPredictor
from service.engines.registry import load_model
from service.exposures import ExposureSet
from service.quality.datasets import LAYOUTS, InvalidDataset, find_scenes, load_scene
from service.quality.evaluation import (
    SaveOptions,
    evaluate,
    pad_amount,
    pad_exposures,
)
from service.quality.synth import generate_dataset, make_scene
from tests.factories import (
    GOLDEN_CHECKPOINT,
    REPO,
    bracket_frames,
    run_python,
    whole_input,
    write_label,
    write_scene,
)

KALANTARI = LAYOUTS["kalantari"]


def _good_scene(folder: Path, seed: int = 0) -> Path:
    frames = bracket_frames(24, 32, evs=(0, 2, 4), seed=seed)
    write_scene(folder, frames, (0, 2, 4))
    write_label(folder, np.full((24, 32, 3), 0.25, dtype=np.float32))
    return folder


def _classical(**kwargs: object) -> ModelPredictor:
    served = load_model(Settings(model_repo=REPO / "model_repo"), "classical")
    return ModelPredictor(served, **kwargs)  # type: ignore[arg-type]


def test_root_with_the_layouts_test_folder_or_a_single_scene_is_found(tmp_path: Path) -> None:
    for name in ("002", "001"):
        _good_scene(tmp_path / "Kal" / "Test" / "Test-set" / name)
    (tmp_path / "Kal" / "Test" / "Test-set" / "notes.txt").write_text("not a scene")
    assert [p.name for p in find_scenes(tmp_path / "Kal", KALANTARI)] == ["001", "002"]
    single = tmp_path / "Kal" / "Test" / "Test-set" / "001"
    assert find_scenes(single, KALANTARI) == [single]
    with pytest.raises(InvalidDataset, match="not a directory"):
        find_scenes(tmp_path / "nowhere", KALANTARI)


def test_hu_layout_reads_only_the_input_frames_and_its_own_file_names(tmp_path: Path) -> None:
    scene = tmp_path / "086"
    frames = bracket_frames(24, 32, evs=(-2, 0, 2))
    write_scene(
        scene,
        frames + frames[:1],
        names=[f"input_{i}_aligned.tif" for i in (1, 2, 3)] + ["ref_1_aligned.tif"],
    )
    (scene / "input_exp.txt").write_text("-2\n0\n2\n")
    write_label(scene, np.ones((24, 32, 3), np.float32), "ref_hdr_aligned_linear.hdr")
    loaded = load_scene(scene, LAYOUTS["hu"])
    assert loaded.exposures.names == tuple(f"input_{i}_aligned.tif" for i in (1, 2, 3))
    assert loaded.exposures.evs == (-2.0, 0.0, 2.0)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: (s / "HDRImg.hdr").unlink(), "scene 002: label HDRImg.hdr is missing"),
        (lambda s: (s / "input_3.tif").unlink(), "scene 002: expected 3 TIFF exposures"),
        (lambda s: (s / "exposure.txt").write_text("0\nzwei\n4\n"), "scene 002: exposure.txt"),
        (lambda s: (s / "exposure.txt").write_bytes(b"\xff\xfe\x00"), "scene 002: "),
        (lambda s: (s / "exposure.txt").write_text("0\n2\n"), "expected 3 exposure values"),
        (lambda s: (s / "exposure.txt").unlink(), "exposure file exposure.txt is missing"),
        (lambda s: (s / "HDRImg.hdr").write_bytes(b"junk"), "scene 002: label HDRImg.hdr"),
        (lambda s: (s / "input_2.tif").write_bytes(b"II*\x00junk"), "scene 002: input_2.tif"),
        (
            lambda s: write_label(s, np.ones((10, 10, 3), np.float32)),
            "label HDRImg.hdr is 10x10, the exposures are 32x24",
        ),
    ],
)
def test_a_broken_scene_is_reported_by_name_and_the_others_are_scored(
    tmp_path: Path, breakage, message: str
) -> None:
    scenes = [_good_scene(tmp_path / name, seed) for seed, name in enumerate(("001", "002", "003"))]
    breakage(scenes[1])
    with pytest.raises(InvalidDataset) as raised:
        load_scene(scenes[1], KALANTARI)
    assert message in raised.value.message
    report = evaluate(_classical(), find_scenes(tmp_path, KALANTARI), KALANTARI)
    assert [s.name for s in report.scenes] == ["001", "003"]
    assert [f.name for f in report.failures] == ["002"]
    assert message in report.failures[0].error
    assert "002" in report.format_table() and message in report.format_table()


@pytest.mark.parametrize("size", [1, 5, 100, 127, 128, 129, 1000, 1500])
def test_pad_amount_is_the_official_formula(size: int) -> None:
    official = (128 - (size - 128) % 128) % 128
    assert pad_amount(size, 128) == official
    assert (size + official) % 128 == 0


def test_padding_the_frames_equals_padding_the_model_input_as_the_official_test() -> None:
    frames = bracket_frames(30, 45, evs=(0, 2, 4))
    exposures = ExposureSet(tuple(frames), (0.0, 2.0, 4.0), ("a", "b", "c"))
    padded = pad_exposures(exposures, 16)
    assert (padded.height, padded.width) == (32, 48)
    ours = whole_input(padded)
    x = torch.from_numpy(whole_input(exposures))
    theirs = F.pad(x, (0, 3, 0, 2), mode="reflect").numpy()
    # Equal up to the last bit of the float32 power, which may take another SIMD path on
    # arrays of another shape; a wrong reflection would differ by far more.
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-6


@pytest.mark.parametrize(("height", "width"), [(40, 56), (64, 30), (17, 128)])
def test_padding_as_long_as_the_side_is_refused_as_the_official_test_does(
    height: int, width: int
) -> None:
    frames = bracket_frames(height, width, evs=(0, 2, 4))
    exposures = ExposureSet(tuple(frames), (0.0, 2.0, 4.0), ("a", "b", "c"))
    pad_h, pad_w = pad_amount(height, 128), pad_amount(width, 128)
    with pytest.raises(RuntimeError):  # what the official F.pad(mode="reflect") does
        F.pad(torch.from_numpy(whole_input(exposures)), (0, pad_w, 0, pad_h), mode="reflect")
    with pytest.raises(InvalidDataset, match=f"frame {width}x{height} cannot be reflect-padded"):
        pad_exposures(exposures, 128)


def test_official_protocol_with_afunet_runs_the_padded_frame_and_crops(tmp_path: Path) -> None:
    scene = make_scene(0, 40, 56)
    exposures = scene.exposure_set()
    served = load_model(Settings(model_repo=tmp_path, device="cpu"), "afunet", GOLDEN_CHECKPOINT)
    predictor = ModelPredictor(served, tile_size=0, pad_to=64)
    prediction = predictor(exposures)
    assert prediction.shape == (40, 56, 3)

    x = torch.from_numpy(whole_input(exposures))
    padded = F.pad(x, (0, 8, 0, 24), mode="reflect")
    with torch.inference_mode():
        expected = served.engine.model(padded)[0, :, :40, :56].numpy()
    np.testing.assert_allclose(prediction, expected.transpose(1, 2, 0), atol=1e-5)
    assert predictor.describe() == {
        "tile_size": None,
        "tile_overlap": 0,
        "tile_batch": served.tile_batch,
        "pad_to": 64,
    }


def test_report_holds_per_scene_scores_means_and_saved_predictions(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "set", 2, 48, 64, seed=1)
    report = evaluate(
        _classical(),
        find_scenes(tmp_path / "set", KALANTARI),
        save=SaveOptions(tmp_path / "pred", ("exr", "png")),
    )
    data = report.as_dict()
    assert [s["name"] for s in data["scenes"]] == ["001", "002"]
    assert set(data["mean"]) == {"psnr_mu", "psnr_l", "ssim_mu", "ssim_l"}
    assert data["mean"]["psnr_mu"] == pytest.approx(np.mean([s["psnr_mu"] for s in data["scenes"]]))
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "001.exr",
        "001.png",
        "002.exr",
        "002.png",
    ]
    report.write_csv(tmp_path / "scores.csv")
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("scene,psnr_mu,psnr_l,ssim_mu,ssim_l")
    assert rows[-1].startswith("mean,")


def test_the_quality_package_imports_no_engine() -> None:
    # engines import quality (the parity check scores with its metric on its scenes), so
    # quality must never import engines: the arrow points one way.
    code = (
        "import importlib, pkgutil, sys\n"
        "import service.quality as quality\n"
        "for module in pkgutil.iter_modules(quality.__path__):\n"
        "    importlib.import_module(f'service.quality.{module.name}')\n"
        "engines = sorted(m for m in sys.modules if m.startswith('service.engines'))\n"
        "assert not engines, engines\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run_python(code)
