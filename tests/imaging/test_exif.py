"""EXIF exposure settings are read from JPEG, PNG and TIFF; damaged EXIF is absent, not fatal."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from imaging.builders import exif_blob, pillow_bytes, png_bytes, tiff_bytes, tiff_with_exif_ifd
from service.imaging import ExifExposure, decode, exif_exposure, parse_exif, probe

EXPECTED = ExifExposure(exposure_time=0.01, f_number=2.8, iso=200.0)


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_exif_rationals_and_iso_are_read_in_either_byte_order(byteorder: str) -> None:
    assert parse_exif(exif_blob(byteorder=byteorder)) == EXPECTED
    assert parse_exif(exif_blob(byteorder=byteorder, header=True)) == EXPECTED


def test_jpeg_exif_exposure_is_read(rgb8: np.ndarray) -> None:
    data = pillow_bytes(rgb8, "JPEG", exif=exif_blob(header=True))
    assert probe(data).exposure == EXPECTED
    assert decode(data).info.exposure == EXPECTED
    assert exif_exposure(data) == EXPECTED


def test_jpeg_exif_written_by_pillow_is_read(rgb8: np.ndarray) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769).update(
        {
            0x829A: TiffImagePlugin.IFDRational(1, 250),
            0x829D: TiffImagePlugin.IFDRational(56, 10),
            0x8827: 1600,
        }
    )
    data = pillow_bytes(rgb8, "JPEG", exif=exif)
    assert probe(data).exposure == ExifExposure(exposure_time=0.004, f_number=5.6, iso=1600.0)


def test_png_exif_chunk_is_read_even_after_the_pixels(rgb8: np.ndarray) -> None:
    before = png_bytes(rgb8, [(b"eXIf", exif_blob())])
    assert probe(before).exposure == EXPECTED
    iend = before.rindex(b"IEND") - 4
    exif_chunk_at = before.index(b"eXIf") - 4
    exif_chunk_end = before.index(b"IDAT") - 4
    chunk = before[exif_chunk_at:exif_chunk_end]
    after = before[:exif_chunk_at] + before[exif_chunk_end:iend] + chunk + before[iend:]
    assert after.index(b"eXIf") > after.index(b"IDAT")
    assert probe(after).exposure == EXPECTED


def test_tiff_exif_ifd_is_read(rgb16: np.ndarray) -> None:
    data = tiff_with_exif_ifd(rgb16, exif_blob())
    assert probe(data).exposure == EXPECTED
    np.testing.assert_array_equal(decode(data).pixels, rgb16)


def test_tiff_exposure_tags_in_ifd0_are_read(rgb16: np.ndarray) -> None:
    tags = [(0x829A, 5, 1, (1, 30), True), (0x829D, 5, 1, (8, 1), True), (0x8827, 3, 1, 100, True)]
    data = tiff_bytes(rgb16, photometric="rgb", extratags=tags)
    assert probe(data).exposure == ExifExposure(exposure_time=1 / 30, f_number=8.0, iso=100.0)


def test_files_without_exif_have_no_exposure(rgb8: np.ndarray) -> None:
    assert probe(png_bytes(rgb8)).exposure is None
    assert probe(pillow_bytes(rgb8, "JPEG")).exposure is None
    assert probe(tiff_bytes(rgb8, photometric="rgb")).exposure is None
    assert exif_exposure(pillow_bytes(rgb8, "JPEG")) is None


def test_missing_fields_are_none_and_an_empty_block_is_no_exposure() -> None:
    assert parse_exif(exif_blob(f_number=None, iso=None)) == ExifExposure(exposure_time=0.01)
    assert parse_exif(exif_blob(None, None, None)) is None
    assert parse_exif(b"") is None
    assert parse_exif(None) is None


def test_zero_denominators_and_zero_values_are_unknown() -> None:
    exposure = parse_exif(exif_blob(exposure_time=(1, 0), f_number=(0, 1)))
    assert exposure == ExifExposure(iso=200.0)


def test_saturated_iso_defers_to_the_exact_iso_speed_tag() -> None:
    assert parse_exif(exif_blob(iso=65535, iso_speed=102400)).iso == 102400.0  # type: ignore[union-attr]
    assert parse_exif(exif_blob(iso=None, iso_speed=320)).iso == 320.0  # type: ignore[union-attr]


def test_every_truncation_and_corruption_of_an_exif_block_parses_without_raising() -> None:
    blob = exif_blob(byteorder=">")
    for cut in range(len(blob)):
        parse_exif(blob[:cut])
    rng = np.random.default_rng(3)
    for _ in range(300):
        damaged = bytearray(blob)
        for at in rng.integers(0, len(blob), 4):
            damaged[at] = int(rng.integers(0, 256))
        parse_exif(bytes(damaged))
    for _ in range(100):
        parse_exif(b"II*\x00" + rng.bytes(60))


def test_damaged_exif_does_not_fail_an_otherwise_good_jpeg(rgb8: np.ndarray) -> None:
    garbage = b"Exif\x00\x00II*\x00" + b"\xff" * 40
    data = pillow_bytes(rgb8, "JPEG", exif=garbage)
    assert decode(data).info.exposure is None


def test_exif_exposure_does_not_judge_the_image(rgb8: np.ndarray) -> None:
    stream = io.BytesIO()
    Image.fromarray(rgb8[:, :, 0]).save(stream, "JPEG", exif=exif_blob(header=True))
    assert exif_exposure(stream.getvalue()) == EXPECTED
