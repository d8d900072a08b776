"""The weight-free classical model: served with no weights, merges, deghosts, tiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.engines.classical import ClassicalEngine, exposure_times
from service.engines.pipeline import reconstruct
from service.engines.registry import load_model
from service.engines.tiling import TilePlan
from service.errors import EngineUnavailable
from service.exposures import ExposureSet
from service.model.preprocess import build_model_input
from service.quality.metrics import score
from service.quality.synth import make_scene
from tests.factories import REPO, bracket_frames, run_python, unit_frames

GAMMA = 2.2


def _merge(ldrs: list[np.ndarray], evs: tuple[float, ...], **kwargs: object) -> np.ndarray:
    """The engine on one whole frame given as three unit-range HxWx3 images."""
    x = build_model_input([np.asarray(v, np.float32) for v in ldrs], evs)
    return ClassicalEngine(**kwargs).merge(x)[0].transpose(1, 2, 0)  # type: ignore[arg-type]


def _run(engine: ClassicalEngine, exposures: ExposureSet, tile: int | None = 512) -> np.ndarray:
    plan = TilePlan.build(exposures.height, exposures.width, tile, 16 if tile else 0)
    return reconstruct(engine, exposures, plan, 2)


def test_runs_through_the_pipeline_where_torch_cannot_be_imported() -> None:
    # ``sys.modules['torch'] = None`` makes every ``import torch`` raise ImportError, as on
    # a host without torch: the engine, its TileBatch and the pipeline must not need it.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from service.engines.classical import ClassicalEngine\n"
        "from service.engines.pipeline import reconstruct\n"
        "from service.engines.tiling import TilePlan\n"
        "from service.quality.synth import make_scene\n"
        "exposures = make_scene(1, 48, 40).exposure_set()\n"
        "hdr = reconstruct(ClassicalEngine(), exposures, TilePlan.build(48, 40, 32, 8), 2)\n"
        "assert hdr.shape == (48, 40, 3) and (hdr > 0).any(), hdr.shape\n"
        "print('ok')\n"
    )
    assert run_python(code).strip() == "ok"


def test_loads_from_a_repository_that_holds_no_weights_at_all(tmp_path: Path) -> None:
    shutil.copytree(REPO / "model_repo" / "classical", tmp_path / "classical")
    (tmp_path / "afunet").mkdir()
    settings = Settings(model_repo=tmp_path)
    with pytest.raises(EngineUnavailable, match="no weights"):
        load_model(settings, "afunet")
    served = load_model(settings, "classical")
    assert (served.engine.backend, served.engine.device, served.engine.precision) == (
        "numpy",
        "cpu",
        "fp32",
    )
    assert served.describe()["version"] is None and served.tile_size == 512
    served.engine.warmup(served.tile_size, served.tile_size, served.tile_batch)


def test_output_is_float32_radiance_of_the_input_tile_shape() -> None:
    tiles = np.random.default_rng(0).random((3, 18, 24, 40), dtype=np.float32)
    out = ClassicalEngine().merge(tiles)
    assert out.shape == (3, 3, 24, 40) and out.dtype == np.float32
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match="18"):
        ClassicalEngine().merge(np.zeros((1, 9, 8, 8), np.float32))


def test_exposure_times_are_read_back_from_the_input() -> None:
    frames = bracket_frames(16, 16, evs=(0, 3, 6))
    ldrs = [f.astype(np.float32) / 65536 for f in frames]
    x = build_model_input(ldrs, (0, 3, 6)).reshape(1, 3, 2, 3, 16, 16)
    times = exposure_times(x[:, :, 0], x[:, :, 1] ** GAMMA)
    np.testing.assert_allclose(times[0], [1, 8, 64], rtol=1e-5)
    x[:, 0] = 0  # a black short exposure: its time is extrapolated, equally spaced
    times = exposure_times(x[:, :, 0], x[:, :, 1] ** GAMMA)
    np.testing.assert_allclose(times[0], [1, 8, 64], rtol=1e-5)


def test_a_static_bracket_merges_to_its_radiance() -> None:
    scene = make_scene(11, 96, 128, motion=False)
    merged = _run(ClassicalEngine(), scene.exposure_set())
    reference_alone = (scene.frames[1] / 65536) ** GAMMA / 2 ** scene.evs[1]
    assert score(merged, scene.label).psnr_mu > 44
    assert score(merged, scene.label).psnr_mu > score(reference_alone, scene.label).psnr_mu + 5


def test_moving_content_falls_back_to_the_reference_instead_of_ghosting() -> None:
    mid = np.full((32, 32, 3), 0.5, np.float32)
    radiance = mid**GAMMA / 4  # in the unit of the shortest exposure, EVs 0, 2, 4
    short = (radiance * 1) ** (1 / GAMMA)
    long = np.clip(radiance * 16, 0, 1) ** (1 / GAMMA)
    short, long = short.copy(), long.copy()
    long[8:16, 8:16] = 0.1  # a dark object that is only in the long exposure
    short[20:28, 20:28] = 0.9  # a bright one only in the short exposure
    merged = _merge([short, mid, long], (0, 2, 4))
    np.testing.assert_allclose(merged, radiance, rtol=0.02)
    ghosted = _merge([short, mid, long], (0, 2, 4), deghost=False)
    assert np.abs(ghosted[8:16, 8:16] / radiance[8:16, 8:16] - 1).max() > 0.5


def test_saturated_reference_takes_the_short_exposure_unless_it_contradicts() -> None:
    radiance = np.full((32, 32, 3), 0.6, np.float32)  # clips the mid and long exposures
    short = radiance ** (1 / GAMMA)
    mid = np.ones_like(radiance) * (65535 / 65536)
    merged = _merge([short, mid, mid], (0, 2, 4))
    np.testing.assert_allclose(merged, radiance, rtol=0.01)
    short = short.copy()
    short[8:16, 8:16] = 0.05  # a dark object in the short exposure only: a ghost
    merged = _merge([short, mid, mid], (0, 2, 4))
    assert merged[8:16, 8:16].min() >= 0.24  # at least what the clipped reference says


def test_a_pixel_clipped_or_black_everywhere_keeps_the_best_bound() -> None:
    white = np.full((16, 16, 3), 65535 / 65536, np.float32)
    black = np.zeros((16, 16, 3), np.float32)
    np.testing.assert_allclose(_merge([white] * 3, (0, 2, 4)), 1.0, rtol=1e-3)
    with np.errstate(all="raise"):
        assert np.array_equal(_merge([black] * 3, (0, 2, 4)), np.zeros((16, 16, 3)))


def test_beats_the_reference_alone_and_a_plain_merge_on_moving_scenes() -> None:
    scenes = [make_scene((3, i), 96, 128) for i in range(4)]
    gains = []
    for scene in scenes:
        exposures = scene.exposure_set()
        classical = score(_run(ClassicalEngine(), exposures), scene.label).psnr_mu
        plain = score(_run(ClassicalEngine(deghost=False), exposures), scene.label).psnr_mu
        reference = score((scene.frames[1] / 65536) ** GAMMA / 2 ** scene.evs[1], scene.label)
        gains.append(classical - max(plain, reference.psnr_mu))
    assert np.mean(gains) > 4  # the 5 dB floor is checked on a larger set in tests/quality


def test_tiles_blend_to_the_whole_frame_result() -> None:
    exposures = make_scene(12, 100, 150).exposure_set()
    whole = _run(ClassicalEngine(), exposures, tile=None)
    tiled = _run(ClassicalEngine(), exposures, tile=48)
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-6)


def test_other_ev_conventions_and_8_bit_frames_give_radiance_in_their_unit() -> None:
    frames = [(f >> 8).astype(np.uint8) for f in bracket_frames(32, 48, evs=(-2, 0, 2))]
    exposures = ExposureSet(tuple(frames), (-2.0, 0.0, 2.0), ("a", "b", "c"))
    merged = _run(ClassicalEngine(), exposures)
    ref = unit_frames(exposures)[1]
    usable = (ref > 0.2) & (ref < 0.8)
    np.testing.assert_allclose(merged[usable], ref[usable] ** GAMMA, rtol=0.05)
