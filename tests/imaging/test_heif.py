"""HEIC/HEIF exposures (iPhone brackets): 8, 10 and 12 bits, EXIF, header-only admission.

Every file is made here by libheif's x265 encoder; lossless ones (4:4:4, identity matrix)
let the decoded samples be compared exactly.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pillow_heif
import pytest

from imaging.builders import exif_blob, heic_bytes, patch_heif_extents, png_bytes
from service.errors import ImageTooLarge, UnsupportedImage
from service.imaging import (
    ExifExposure,
    ImageFormat,
    ImageInfo,
    decode,
    exif_exposure,
    probe,
    sniff_format,
    to_unit_float,
)
from service.imaging.formats import iso_brands
from service.imaging.heif import MAX_BOXES, widen


def _levels(bits: int, seed: int = 10) -> np.ndarray:
    """48 x 64 x 3 ``bits``-bit noise in uint16, both extremes present."""
    pixels = np.random.default_rng(seed).integers(0, 1 << bits, (48, 64, 3), dtype=np.uint16)
    pixels[0, 0] = 0
    pixels[0, 1] = (1 << bits) - 1
    return pixels


def _mdat_payload(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload of the top-level ``mdat`` box (a 32-bit size)."""
    at = data.rindex(b"mdat") - 4
    size = int.from_bytes(data[at : at + 4], "big")
    return at + 8, at + size


# -- round trips ------------------------------------------------------------------------------


def test_8bit_heic_decodes_exactly_with_its_exif_exposure(rgb8: np.ndarray) -> None:
    data = heic_bytes(rgb8, exif=exif_blob(exposure_time=(1, 50), iso=100))
    info = probe(data, name="IMG_0001.HEIC")
    assert info == ImageInfo(
        ImageFormat.HEIF,
        width=64,
        height=48,
        channels=3,
        bit_depth=8,
        exposure=ExifExposure(exposure_time=0.02, f_number=2.8, iso=100.0),
        coded_pixels=info.coded_pixels,
    )
    assert info.coded_pixels >= 64 * 48  # the coded frame may be padded, then cropped
    image = decode(data)
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb8)
    assert exif_exposure(data) == info.exposure


def test_exif_block_with_its_jpeg_style_header_is_read_too(rgb8: np.ndarray) -> None:
    data = heic_bytes(rgb8, exif=exif_blob(exposure_time=(1, 4000), header=True))
    exposure = probe(data).exposure
    assert exposure is not None and exposure.exposure_time == pytest.approx(1 / 4000)


def test_heic_without_exif_has_no_exposure(rgb8: np.ndarray) -> None:
    data = heic_bytes(rgb8)
    assert probe(data).exposure is None
    assert exif_exposure(data) is None


def test_10bit_heic_is_widened_to_16bit_by_bit_replication() -> None:
    levels = _levels(10)
    data = heic_bytes(levels, bits=10, exif=exif_blob(exposure_time=(1, 100)))
    info = probe(data)
    assert (info.bit_depth, info.width, info.height) == (10, 64, 48)
    assert info.exposure is not None and info.exposure.exposure_time == 0.01
    pixels = decode(data).pixels
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, (levels << 6) | (levels >> 4))
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() == [65535] * 3
    # A saturated 10-bit pixel lands where saturated 8- and 16-bit ones do.
    saturated = to_unit_float(pixels[:1, 1:2])
    assert saturated.max() == to_unit_float(np.full((1, 1, 3), 255, np.uint8)).max()


def test_12bit_heic_is_widened_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pillow_heif.options, "SAVE_HDR_TO_12_BIT", True)
    levels = _levels(12)
    data = heic_bytes(levels, bits=12)
    assert probe(data).bit_depth == 12
    np.testing.assert_array_equal(decode(data).pixels, (levels << 4) | (levels >> 8))


@pytest.mark.parametrize("bits", [10, 12])
def test_widening_is_monotonic_and_within_one_level_of_exact_scaling(bits: int) -> None:
    every = np.arange(1 << bits, dtype=np.uint16)
    wide = widen(every, bits).astype(np.int64)
    exact = np.round(every.astype(np.float64) * 65535 / ((1 << bits) - 1))
    assert np.abs(wide - exact).max() <= 1
    assert (np.diff(wide) > 0).all()
    assert (wide[0], wide[-1]) == (0, 65535)


def test_lossy_heic_as_a_phone_writes_it_decodes_close_to_its_source() -> None:
    ramp = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8)
    data = heic_bytes(ramp, lossless=False, quality=90)  # 4:2:0, YCbCr
    assert data[8:12] == b"heic"
    pixels = decode(data).pixels
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - ramp).mean() < 3


def test_iphone_style_grid_image_decodes_whole(rgb8: np.ndarray) -> None:
    frame = np.tile(rgb8, (2, 3, 1))  # 96 x 192: 2 x 3 tiles of 64 pixels
    data = heic_bytes(frame, tile_size=64)
    assert b"grid" in data
    info = probe(data)
    assert (info.width, info.height) == (192, 96)
    np.testing.assert_array_equal(decode(data).pixels, frame)


def test_of_several_images_the_primary_one_is_used(rgb8: np.ndarray) -> None:
    other = np.zeros((16, 32, 3), np.uint8)
    heif = pillow_heif.from_bytes(mode="RGB", size=(32, 16), data=other.tobytes())
    heif.add_frombytes(mode="RGB", size=(64, 48), data=rgb8.tobytes())
    stream = io.BytesIO()
    heif.save(stream, quality=-1, chroma=444, matrix_coefficients=0, primary_index=1)
    info = probe(stream.getvalue())
    assert (info.width, info.height) == (64, 48)
    np.testing.assert_array_equal(decode(stream.getvalue()).pixels, rgb8)


def test_format_is_sniffed_from_the_ftyp_box_not_the_name(rgb8: np.ndarray) -> None:
    data = heic_bytes(rgb8)
    assert sniff_format(data) is ImageFormat.HEIF
    assert decode(data, name="photo.png").info.format is ImageFormat.HEIF
    assert decode(png_bytes(rgb8), name="photo.heic").info.format is ImageFormat.PNG


# -- header-only admission --------------------------------------------------------------------


def test_probe_reads_the_container_only_never_the_coded_pixels(rgb8: np.ndarray) -> None:
    """Garbage where the HEVC data should be: the header still probes, decoding fails."""
    data = bytearray(heic_bytes(rgb8))
    start, end = _mdat_payload(bytes(data))
    data[start:end] = b"\x00" * (end - start)
    info = probe(bytes(data))
    assert (info.format, info.width, info.height) == (ImageFormat.HEIF, 64, 48)
    with pytest.raises(UnsupportedImage, match="corrupt HEIF") as caught:
        decode(bytes(data), name="zeroed.heic")
    assert caught.value.message.startswith("zeroed.heic: ")
    assert caught.value.http_status == 415


def test_a_bomb_header_is_measured_without_decoding_and_refused() -> None:
    tiny = heic_bytes(np.zeros((64, 64, 3), np.uint8), lossless=False)  # no crop: size = ispe
    bomb = patch_heif_extents(tiny, 100_000, 100_000)
    assert len(bomb) < 5000
    started = time.perf_counter()
    info = probe(bomb)
    assert time.perf_counter() - started < 1.0
    assert info.pixels == 100_000 * 100_000
    with pytest.raises(ImageTooLarge, match=r"100000x100000 \(10000000000 pixels\)") as caught:
        decode(bomb, name="bomb.heic", max_pixels=50_000_000)
    assert caught.value.http_status == 413
    assert caught.value.message.startswith("bomb.heic: ")


def test_a_huge_coded_frame_cropped_to_a_few_pixels_is_a_bomb_too(rgb8: np.ndarray) -> None:
    data = heic_bytes(rgb8, lossless=False)  # 64 x 48 coded as 64 x 64, cropped by clap
    assert b"clap" in data
    bomb = patch_heif_extents(data, 30_000, 30_000)
    info = probe(bomb)
    assert (info.width, info.height) == (64, 48)
    assert info.coded_pixels == 900_000_000
    with pytest.raises(ImageTooLarge, match="cropped from a coded image of 900000000 pixels"):
        probe(bomb, name="crop.heic", max_pixels=24_000_000)


@pytest.mark.parametrize("keep", [16, 40, 200, 0.5, -1])
def test_a_truncated_heic_is_refused_at_probe_naming_the_file(
    rgb8: np.ndarray, keep: float
) -> None:
    data = heic_bytes(rgb8, exif=exif_blob())
    cut = data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep]
    with pytest.raises(UnsupportedImage, match="truncated HEIF") as caught:
        probe(cut, name="cut.heic")
    assert caught.value.message.startswith("cut.heic: ")
    assert caught.value.http_status == 415


def test_trailing_bytes_after_the_last_box_are_refused(rgb8: np.ndarray) -> None:
    with pytest.raises(UnsupportedImage, match="a box header is cut short"):
        probe(heic_bytes(rgb8) + b"\x00\x00\x00")


def test_a_file_of_countless_empty_boxes_is_refused_quickly(rgb8: np.ndarray) -> None:
    data = heic_bytes(rgb8) + b"\x00\x00\x00\x08free" * (MAX_BOXES + 1)
    started = time.perf_counter()
    with pytest.raises(UnsupportedImage, match=f"more than {MAX_BOXES} boxes"):
        probe(data)
    assert time.perf_counter() - started < 1.0


def test_a_huge_brand_list_is_not_read_whole() -> None:
    """Only the first brands count: one hidden a megabyte in does not make a HEIF."""
    count = 1_000_000
    head = (16 + 4 * (count + 1)).to_bytes(4, "big") + b"ftypisom\x00\x00\x00\x00"
    data = head + b"iso2" * count + b"heic"
    assert len(iso_brands(data)) <= 65
    with pytest.raises(UnsupportedImage, match="not a PNG, JPEG, TIFF or HEIC image"):
        sniff_format(data)


# -- what is refused --------------------------------------------------------------------------


def test_heic_with_alpha_is_refused() -> None:
    rgba = np.full((16, 16, 4), 200, np.uint8)
    with pytest.raises(UnsupportedImage, match=r"4 channels \(RGBA\); expected RGB"):
        probe(heic_bytes(rgba, lossless=False))


def test_grayscale_heic_is_refused() -> None:
    gray = np.full((16, 16), 100, np.uint8)
    with pytest.raises(UnsupportedImage, match=r"1 channel \(grayscale\); expected RGB"):
        probe(heic_bytes(gray, lossless=False))


def _rebrand(data: bytes, major: bytes, compatible: bytes) -> bytes:
    """``data`` with its ftyp brands replaced (same box length: 4 + 4 + 12 bytes)."""
    assert len(compatible) == 12 and data[4:8] == b"ftyp"
    return data[:8] + major + data[12:16] + compatible + data[28:]


def test_an_image_sequence_is_refused(rgb8: np.ndarray) -> None:
    sequence = _rebrand(heic_bytes(rgb8), b"hevc", b"msf1hevciso8")
    assert sniff_format(sequence) is ImageFormat.HEIF
    with pytest.raises(UnsupportedImage, match=r"image sequence.*expected a still image"):
        probe(sequence, name="burst.heics")


def test_avif_is_refused_by_name(rgb8: np.ndarray) -> None:
    avif = _rebrand(heic_bytes(rgb8), b"avif", b"mif1avifmiaf")
    with pytest.raises(UnsupportedImage, match=r"AVIF \(AV1-coded\) image"):
        probe(avif)


def test_other_iso_media_files_are_not_images(rgb8: np.ndarray) -> None:
    mp4 = _rebrand(heic_bytes(rgb8), b"isom", b"isomiso2mp41")
    with pytest.raises(UnsupportedImage, match="not a PNG, JPEG, TIFF or HEIC image"):
        probe(mp4, name="clip.mp4")
