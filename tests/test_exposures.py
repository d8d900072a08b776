"""Exposure sets from scene folders and file lists, and every way they can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from service.errors import InvalidExposureSet, UnsupportedImage
from service.exposures import (
    check_exposure_values,
    ev_from_exposure_times,
    load_exposure_files,
    load_scene_dir,
    parse_exposure_file,
    parse_exposure_values,
    relative_to_shortest,
)
from service.imaging import to_unit_float
from tests.factories import GOLDEN_SEED0, bracket_frames, write_scene
from tests.imaging.builders import heic_bytes


def test_scene_frames_are_taken_in_file_name_order(tmp_path: Path) -> None:
    frames = bracket_frames(16, 24)
    scene = write_scene(tmp_path / "s", frames, (0, 2, 4), names=["c.tif", "b.tif", "a.tif"])
    loaded = load_scene_dir(scene)
    assert loaded.names == ("a.tif", "b.tif", "c.tif")
    assert np.array_equal(loaded.frames[0], frames[2])
    assert loaded.evs == (0.0, 2.0, 4.0)


def test_a_folder_of_iphone_heic_files_is_a_scene(tmp_path: Path) -> None:
    frames = [(f >> 6) for f in bracket_frames(16, 24)]  # 10-bit levels
    scene = tmp_path / "iphone"
    scene.mkdir()
    for i, frame in enumerate(frames):
        (scene / f"IMG_000{i}.HEIC").write_bytes(heic_bytes(frame, bits=10))
    (scene / "exposure.txt").write_text("0\n2\n4\n")
    loaded = load_scene_dir(scene)
    assert loaded.names == ("IMG_0000.HEIC", "IMG_0001.HEIC", "IMG_0002.HEIC")
    assert np.array_equal(loaded.frames[1], (frames[1] << 6) | (frames[1] >> 4))
    assert loaded.evs == (0.0, 2.0, 4.0)


def test_two_tiffs_are_refused_naming_scene_and_files(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "two", bracket_frames(16, 16)[:2], (0, 2, 4))
    with pytest.raises(InvalidExposureSet, match=r"two: expected 3 exposures, found 2: input_1"):
        load_scene_dir(scene)


def test_four_tiffs_are_refused(tmp_path: Path) -> None:
    frames = bracket_frames(16, 16)
    scene = write_scene(tmp_path / "four", [*frames, frames[0]], (0, 2, 4))
    with pytest.raises(InvalidExposureSet, match="found 4"):
        load_scene_dir(scene)


def test_sizes_that_differ_are_refused(tmp_path: Path) -> None:
    frames = bracket_frames(16, 16)
    frames[2] = bracket_frames(16, 24)[2]
    scene = write_scene(tmp_path / "sizes", frames, (0, 2, 4))
    with pytest.raises(InvalidExposureSet, match="sizes differ"):
        load_scene_dir(scene)


def test_grayscale_frame_is_refused(tmp_path: Path) -> None:
    frames = bracket_frames(16, 16)
    scene = write_scene(tmp_path / "gray", frames, (0, 2, 4))
    tifffile.imwrite(scene / "input_2.tif", frames[1][..., 0])
    with pytest.raises(UnsupportedImage, match=r"input_2\.tif"):
        load_scene_dir(scene)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0\n2\n", "expected 3 exposure values, got 2"),
        ("0\nnan\n4\n", "finite"),
        ("4\n2\n0\n", "strictly increasing"),
        ("0\n2\n2\n", "strictly increasing"),
        ("zero\ntwo\nfour\n", "exposure.txt: not a list of numbers"),
    ],
)
def test_bad_exposure_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    scene = write_scene(tmp_path / "ev", bracket_frames(16, 16), text)
    with pytest.raises(InvalidExposureSet, match=message):
        load_scene_dir(scene)


def test_missing_exposure_file_is_refused(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "noev", bracket_frames(16, 16), None)
    with pytest.raises(InvalidExposureSet, match=r"cannot read exposure\.txt"):
        load_scene_dir(scene)


def test_empty_folder_and_missing_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidExposureSet, match="no TIFF, PNG, JPEG or HEIC"):
        load_scene_dir(tmp_path)
    with pytest.raises(InvalidExposureSet, match="not a directory"):
        load_scene_dir(tmp_path / "absent")


def test_negative_evs_are_valid_stops() -> None:
    assert check_exposure_values([-2, 0, 2]) == (-2.0, 0.0, 2.0)


def test_scene_exposure_file_is_used_verbatim_as_the_official_loader_reads_it(
    tmp_path: Path,
) -> None:
    # The golden case was made by the official code from its -2/0/2 file, unshifted.
    assert load_scene_dir(GOLDEN_SEED0).evs == (-2.0, 0.0, 2.0)
    scene = write_scene(tmp_path / "neg", bracket_frames(16, 16), "# stops\n-3.00\n0.00\n3.00\n")
    assert load_scene_dir(scene).evs == (-3.0, 0.0, 3.0)


@pytest.mark.parametrize(
    ("text", "evs"),
    [
        ("0\n2\n4\n", (0.0, 2.0, 4.0)),
        ("-2.00\n0.00\n2.00\n", (-2.0, 0.0, 2.0)),
        ("0 3 6\n", (0.0, 3.0, 6.0)),  # one line, as np.loadtxt reads it
        ("# EV\n1e0\n2\n3\n", (1.0, 2.0, 3.0)),
    ],
)
def test_exposure_file_reads_what_np_loadtxt_reads(text: str, evs: tuple[float, ...]) -> None:
    assert parse_exposure_file(text) == evs


def test_exposure_file_with_commas_is_refused_as_np_loadtxt_refuses_it() -> None:
    with pytest.raises(InvalidExposureSet, match=r"exposure\.txt: not a list of numbers"):
        parse_exposure_file("0,2,4\n")


def test_evs_are_made_relative_to_the_shortest_exposure() -> None:
    assert relative_to_shortest([-2, 0, 2]) == relative_to_shortest([0, 2, 4]) == (0.0, 2.0, 4.0)
    assert relative_to_shortest([2, -2, 0]) == (4.0, 0.0, 2.0)  # upload order is kept
    assert relative_to_shortest([-10, -8, -6]) == (0.0, 2.0, 4.0)  # log2 of 1/1024 s...
    assert relative_to_shortest([]) == ()


@pytest.mark.parametrize(
    ("text", "evs"),
    [
        ("-2,0,2", (-2.0, 0.0, 2.0)),
        (" 0 2  4 ", (0.0, 2.0, 4.0)),
        ("+1.5, .5,2.", (1.5, 0.5, 2.0)),
        ("0.01,0.04,0.16", (0.01, 0.04, 0.16)),
    ],
)
def test_plain_decimals_are_parsed(text: str, evs: tuple[float, ...]) -> None:
    assert parse_exposure_values(text, "--ev") == evs


@pytest.mark.parametrize(
    "bad", ["1_0", "1e3", "nan", "inf", "-infinity", "0x10", "1.2.3", "--2", ".", "\u0662"]
)
def test_values_python_float_would_take_are_refused_by_name(bad: str) -> None:
    # float() read "0,1_0,2_0" as 0, 10, 20: every value must be a plain decimal number.
    with pytest.raises(InvalidExposureSet) as refused:
        parse_exposure_values(f"0,{bad},4", "--ev")
    assert (
        refused.value.message
        == f"--ev: {bad!r} is not a plain decimal number (such as -2, 0 or 0.5)"
    )


def test_exposure_times_must_be_positive() -> None:
    assert ev_from_exposure_times([0.25, 1, 4]) == (-2.0, 0.0, 2.0)
    for bad in ([0, 1, 4], [-1, 1, 4], [float("nan"), 1, 2]):
        with pytest.raises(InvalidExposureSet, match="positive seconds"):
            ev_from_exposure_times(bad)


def test_8bit_pngs_are_scaled_like_16bit_values(tmp_path: Path) -> None:
    frames = bracket_frames(16, 16, bits=8)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(frame).save(paths[-1])
    loaded = load_exposure_files(paths, [-2, 0, 2])
    crop = to_unit_float(loaded.raw_crop(0, 0, 16, 16)[1])
    assert crop.dtype == np.float32
    assert np.array_equal(crop, (frames[1].astype(np.float64) * 257 / 65536).astype(np.float32))


def test_file_list_needs_three_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidExposureSet, match="expected 3 exposure files, got 2"):
        load_exposure_files([tmp_path / "a.png", tmp_path / "b.png"], [0, 2])
