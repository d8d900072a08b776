"""Synthetic scenes: deterministic, in the model's conventions, with motion that matters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.quality.datasets import LAYOUTS, load_scene
from service.quality.synth import (
    EV_STEPS,
    SyntheticScene,
    generate_dataset,
    make_scene,
    write_scene,
)
from tests.factories import unit_frames, whole_input

H, W = 64, 96


def _hdr_channels(scene: SyntheticScene) -> list[np.ndarray]:
    """Each exposure's hdr channels of the official model input, H x W x 3."""
    x = whole_input(scene.exposure_set())[0]
    return [x[6 * i : 6 * i + 3].transpose(1, 2, 0) for i in range(3)]


def test_same_seed_same_scene_other_seed_other_scene() -> None:
    a, b, c = make_scene(7, H, W), make_scene(7, H, W), make_scene(8, H, W)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert np.array_equal(a.label, b.label) and a.evs == b.evs
    assert not np.array_equal(a.label, c.label)


def test_scene_has_three_16_bit_frames_ev_stops_from_the_shortest_and_a_unit_label() -> None:
    scene = make_scene(1, H, W)
    assert len(scene.frames) == 3
    assert all(f.dtype == np.uint16 and f.shape == (H, W, 3) for f in scene.frames)
    step = scene.evs[1]
    assert step in EV_STEPS and scene.evs == (0.0, step, 2 * step)
    assert scene.label.dtype == np.float32 and scene.label.shape == (H, W, 3)
    assert scene.label.min() >= 0 and scene.label.max() <= 1.0


def test_hdr_channels_of_well_exposed_static_pixels_equal_the_label() -> None:
    scene = make_scene(2, H, W, motion=False, noise=False)
    ldrs = unit_frames(scene.exposure_set())
    for ldr, hdr in zip(ldrs, _hdr_channels(scene), strict=True):
        usable = (ldr > 0.2).all(axis=2) & (ldr < 0.9).all(axis=2)
        assert usable.mean() > 0.05
        relative = np.abs(hdr[usable] / scene.label[usable] - 1)
        assert np.median(relative) < 0.005 and relative.max() < 0.05


def test_brackets_hold_saturated_highlights_and_deep_shadows() -> None:
    scene = make_scene(3, 128, 192, ev_step=2.0)
    short, mid, long = (f.astype(np.float64) / 65535 for f in scene.frames)
    assert (mid.max(axis=2) > 0.99).mean() > 0.01  # the reference clips somewhere
    assert (long.max(axis=2) > 0.99).mean() > (mid.max(axis=2) > 0.99).mean()
    assert (short.mean(axis=2) < 0.1).mean() > 0.05  # the short frame is dark and noisy
    assert scene.label.max() / max(np.percentile(scene.label, 5), 1e-6) > 2**8


def _disagreement(scene: SyntheticScene) -> float:
    """Share of pixels where the long exposure, re-exposed as the reference, differs."""
    hdr = _hdr_channels(scene)
    t_ref = 2.0 ** scene.evs[1]
    ref = scene.frames[1].astype(np.float64) / 65536
    unclipped = scene.frames[2].max(axis=2) < 60000
    predicted = np.clip(hdr[2] * t_ref, 0, 1) ** (1 / 2.2)
    return float((np.abs(predicted - ref).mean(axis=2) > 0.05)[unclipped].mean())


def test_objects_move_between_exposures_unless_static() -> None:
    moving = make_scene(4, 128, 192, ev_step=1.0, noise=False)
    still = make_scene(4, 128, 192, ev_step=1.0, noise=False, motion=False)
    assert _disagreement(still) < 0.005
    assert _disagreement(moving) > 0.02


def test_camera_shake_only_moves_the_frames() -> None:
    still = make_scene(5, H, W)
    shaken = make_scene(5, H, W, camera_shake=2.0)
    assert np.array_equal(still.label, shaken.label)  # the reference does not move
    assert not np.array_equal(still.frames[0], shaken.frames[0])


def test_written_scene_reads_back_in_kalantari_layout(tmp_path: Path) -> None:
    scene = make_scene(6, H, W)
    folder = write_scene(scene, tmp_path / "001")
    assert sorted(p.name for p in folder.iterdir()) == [
        "HDRImg.hdr",
        "exposure.txt",
        "input_1.tif",
        "input_2.tif",
        "input_3.tif",
    ]
    loaded = load_scene(folder, LAYOUTS["kalantari"])
    assert loaded.exposures.evs == scene.evs
    assert all(
        np.array_equal(a, b) for a, b in zip(loaded.exposures.frames, scene.frames, strict=True)
    )
    # Radiance RGBE keeps about 1% per pixel.
    close = np.abs(loaded.label - scene.label) <= 0.01 * scene.label.max(axis=2, keepdims=True)
    assert close.all()


def test_a_smaller_set_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    two = generate_dataset(tmp_path / "two", 2, 32, 48, seed=3)
    three = generate_dataset(tmp_path / "three", 3, 32, 48, seed=3)
    assert [p.name for p in three] == ["001", "002", "003"]
    for a, b in zip(two, three, strict=False):
        assert (a / "input_2.tif").read_bytes() == (b / "input_2.tif").read_bytes()


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="16x16"):
        make_scene(0, 8, 64)
    with pytest.raises(ValueError, match="ev_step"):
        make_scene(0, 32, 32, ev_step=0)
