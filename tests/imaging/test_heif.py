"""HEIC/HEIF exposures (iPhone brackets): 8, 10 and 12 bits, EXIF, header-only admission.

Every file is made here by libheif's x265 encoder; lossless ones (4:4:4, identity matrix)
let the decoded samples be compared exactly.
"""

from __future__ import annotations

import contextlib
import io
import struct
import time

import numpy as np
import pillow_heif
import pytest

from imaging.builders import (
    exif_blob,
    heic_bytes,
    hevc_sps,
    patch_heif_extents,
    patch_heif_sps,
    png_bytes,
)
from service.errors import ImageTooLarge, UnsupportedImage
from service.imaging import (
    ExifExposure,
    ImageFormat,
    ImageInfo,
    decode,
    exif_exposure,
    heif,
    probe,
    sniff_format,
    to_unit_float,
)
from service.imaging.formats import iso_brands
from service.imaging.heif import MAX_BOXES, SpsSize, hvcc_sps_sizes, parse_sps, widen


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


def _property(data: bytes, kind: bytes) -> tuple[int, int]:
    """(start, end) of the payload of the first ``kind`` box in ``data`` (a 32-bit size)."""
    at = data.index(kind) - 4
    return at + 8, at + int.from_bytes(data[at : at + 4], "big")


def _sps_nal(data: bytes) -> tuple[int, int]:
    """(start, end) of the first SPS NAL unit (header 42 01) in ``data``'s ``hvcC``."""
    start, end = _property(data, b"hvcC")
    at = data.index(b"\x42\x01", start + 23, end)
    return at, at + int.from_bytes(data[at - 2 : at], "big")


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


# -- the coded picture size in the HEVC SPS ---------------------------------------------------


@pytest.mark.parametrize("bits", [8, 10])
@pytest.mark.parametrize("lossless", [True, False])
@pytest.mark.parametrize(
    ("size", "shown", "coded"),
    [
        ((130, 100), (130, 100), (136, 104)),  # coded in whole 8 x 8 blocks, then cropped
        ((1000, 130), (1000, 130), (1000, 136)),
        ((64, 200), (64, 200), (64, 200)),
        ((64, 48), (64, 64), (64, 64)),  # libheif pads to 64 x 64 and crops by clap
    ],
)
def test_the_sps_of_a_real_encode_declares_its_size(
    size: tuple[int, int], shown: tuple[int, int], coded: tuple[int, int], lossless: bool, bits: int
) -> None:
    """x265 codes whole 8 x 8 blocks; its conformance window crops them to what ``ispe``
    declares, and ``coded_pixels`` is the coded size, what the decoder allocates."""
    width, height = size
    pixels = np.random.default_rng(width).integers(0, 1 << bits, (height, width, 3))
    data = heic_bytes(pixels.astype(np.uint8 if bits == 8 else np.uint16), bits, lossless=lossless)
    start, end = _property(data, b"hvcC")
    assert struct.unpack_from(">II", data, _property(data, b"ispe")[0] + 4) == shown
    assert hvcc_sps_sizes(data[start:end]) == (SpsSize(*coded, *shown),)
    info = probe(data)
    assert (info.width, info.height, info.coded_pixels) == (width, height, coded[0] * coded[1])


@pytest.mark.parametrize(
    ("chroma", "window", "cropped"),
    [
        (1, (1, 2, 3, 4), (130 - 6, 100 - 14)),  # 4:2:0: offsets in 2 x 2 luma samples
        (2, (1, 2, 3, 4), (130 - 6, 100 - 7)),  # 4:2:2: 2 wide, 1 high
        (3, (1, 2, 3, 4), (130 - 3, 100 - 7)),  # 4:4:4 (with separate_colour_plane_flag)
        (0, (1, 2, 3, 4), (130 - 3, 100 - 7)),  # monochrome
        (1, None, (130, 100)),
    ],
)
@pytest.mark.parametrize(
    "sub_layers", [(), ((True, True),), ((False, True), (True, False), (False, False))]
)
def test_parse_sps_reads_past_sub_layers_to_the_size_and_conformance_window(
    chroma: int,
    window: tuple[int, int, int, int] | None,
    cropped: tuple[int, int],
    sub_layers: tuple[tuple[bool, bool], ...],
) -> None:
    nal = hevc_sps(130, 100, chroma, sub_layers, window)
    assert b"\x00\x00\x03" in nal  # the zero profile fields needed emulation prevention
    assert parse_sps(nal) == SpsSize(130, 100, *cropped)


def test_hostile_sps_bytes_raise_value_error_with_a_reason_and_nothing_else() -> None:
    nal = hevc_sps(20_000, 20_000, sub_layers=((True, True),) * 6, window=(1, 1, 1, 1))
    assert parse_sps(nal).pixels == 400_000_000
    for cut in range(len(nal) - 1):  # every truncation, down to no header at all
        with pytest.raises(ValueError, match="SPS"):
            parse_sps(nal[:cut])
    with pytest.raises(ValueError, match="longer than 32 bits"):
        parse_sps(b"\x42\x01" + b"\x01" + bytes(12) + b"\x00\x00\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="sps_max_sub_layers_minus1 is 7"):
        parse_sps(b"\x42\x01\x0f" + bytes(20))
    with pytest.raises(ValueError, match="crops all of the 130x100 picture"):
        parse_sps(hevc_sps(130, 100, window=(40, 30, 0, 0)))
    rng = np.random.default_rng(33)
    for _ in range(2000):  # random bodies: a size or a ValueError, never anything else
        body = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        with contextlib.suppress(ValueError):
            parse_sps(b"\x42\x01" + body)


@pytest.mark.parametrize("bits", [8, 10])
def test_a_small_ispe_over_a_huge_sps_is_a_bomb(bits: int) -> None:
    """``ispe`` is the container's claim; the SPS is what libheif's decoder allocates."""
    data = heic_bytes(_levels(bits), bits=bits, lossless=False)
    bomb = patch_heif_sps(data, 20_000, 20_000)
    ispe = _property(bomb, b"ispe")[0] + 4
    assert struct.unpack_from(">II", bomb, ispe) == (64, 64)  # the claim is unchanged
    info = probe(bomb)
    assert (info.width, info.height, info.coded_pixels) == (64, 48, 400_000_000)
    with pytest.raises(ImageTooLarge, match="coded image of 400000000 pixels") as caught:
        decode(bomb, name="sps.heic", max_pixels=24_000_000)
    assert caught.value.http_status == 413
    assert caught.value.message.startswith("sps.heic: image is 64x48, ")


def test_the_respelled_sps_is_the_only_change(rgb8: np.ndarray) -> None:
    """The bomb builder keeps the file decodable when it writes the size that was there."""
    data = heic_bytes(rgb8)
    assert patch_heif_sps(data, 64, 64) == data
    moved = patch_heif_sps(data, 2048, 2048)  # ue(v) codes grow: boxes and iloc move
    assert len(moved) > len(data)
    np.testing.assert_array_equal(decode(patch_heif_sps(moved, 64, 64)).pixels, rgb8)


def test_grid_tiles_count_together_and_each_time_they_are_listed(rgb8: np.ndarray) -> None:
    """The decoder decodes every tile a grid lists: six 3000 x 3000 tiles are 54 MP of
    decoding behind a 192 x 96 image, even when they are one tile listed six times."""
    grid = heic_bytes(np.tile(rgb8, (2, 3, 1)), tile_size=64)
    assert probe(grid).coded_pixels == 6 * 64 * 64
    bomb = patch_heif_sps(grid, 3000, 3000)
    assert probe(bomb).coded_pixels == 6 * 9_000_000
    with pytest.raises(ImageTooLarge, match="coded image of 54000000 pixels"):
        probe(bomb, name="grid.heic", max_pixels=24_000_000)
    refs = bytearray(bomb)
    start, end = _property(bytes(refs), b"dimg")
    assert struct.unpack_from(">HH", refs, start) == (1, 6)  # from the grid, six tiles
    first = refs[start + 4 : start + 6]
    refs[start + 4 : end] = first * 6
    assert probe(bytes(refs)).coded_pixels == 6 * 9_000_000


def test_an_sps_inside_the_coded_data_counts_too(rgb8: np.ndarray) -> None:
    """libheif hands the decoder the item's NAL units after hvcC's; an SPS among them
    replaces the one ``hvcC`` declared."""
    data = bytearray(heic_bytes(rgb8, lossless=False))
    start, _ = _mdat_payload(bytes(data))
    length = int.from_bytes(data[start : start + 4], "big")
    nal = hevc_sps(20_000, 20_000)
    data[start + 4 : start + 4 + length] = nal + bytes(length - len(nal))
    with pytest.raises(ImageTooLarge, match="coded image of 400000000 pixels"):
        probe(bytes(data), max_pixels=24_000_000)


def _with_sps_bytes(data: bytes, edit: bytes, at: int = 0) -> bytes:
    """``data`` with bytes of its ``hvcC``'s SPS NAL unit overwritten from ``at``."""
    start, end = _sps_nal(data)
    assert start + at + len(edit) <= end
    return data[: start + at] + edit + data[start + at + len(edit) :]


@pytest.mark.parametrize(
    ("edit", "at", "reason"),
    [
        (bytes(30), 2, "an exp-Golomb code in the SPS is longer than 32 bits"),
        (b"\x44", 0, "hvcC holds no SPS"),  # the SPS's own header now says PPS
        (b"\x0e", 2, "sps_max_sub_layers_minus1 is 7"),
    ],
    ids=["zeros", "no-sps", "sub-layers"],
)
def test_a_garbage_sps_in_hvcc_is_415_with_the_reason(
    rgb8: np.ndarray, edit: bytes, at: int, reason: str
) -> None:
    data = _with_sps_bytes(heic_bytes(rgb8), edit, at)
    with pytest.raises(UnsupportedImage, match=f"corrupt HEIF: {reason}") as caught:
        probe(data, name="bad.heic")
    assert caught.value.message.startswith("bad.heic: ")
    assert caught.value.http_status == 415


@pytest.mark.parametrize("cut", [0, 10, 22, 23, 26, 40])
def test_a_truncated_hvcc_is_415_with_the_reason(rgb8: np.ndarray, cut: int) -> None:
    """The hvcC payload shrinks to ``cut`` bytes, a free box filling the rest, so the
    boxes after it keep their places."""
    data = heic_bytes(rgb8)
    start, end = _property(data, b"hvcC")
    short = bytearray(data)
    short[start - 8 : start - 4] = (8 + cut).to_bytes(4, "big")
    rest = end - start - cut  # becomes a free box
    short[start + cut : end] = rest.to_bytes(4, "big") + b"free" + bytes(rest - 8)
    with pytest.raises(UnsupportedImage, match=r"corrupt HEIF: hvcC (is \d+ bytes|ends)"):
        probe(bytes(short))


def test_an_sps_filed_under_another_nal_type_still_counts(rgb8: np.ndarray) -> None:
    """The decoder goes by each NAL unit's own header, not the array's label."""
    bomb = bytearray(patch_heif_sps(heic_bytes(rgb8), 20_000, 20_000))
    start, _ = _sps_nal(bytes(bomb))
    assert bomb[start - 5] & 0x3F == 33  # array type, then the count and the length
    bomb[start - 5] = bomb[start - 5] & 0xC0 | 39  # now filed as SEI
    assert probe(bytes(bomb)).coded_pixels == 400_000_000


def test_countless_empty_nal_units_are_refused_not_walked(
    rgb8: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zeroed coded data is thousands of empty NAL units: walked up to the bound only."""
    data = bytearray(heic_bytes(rgb8))
    start, end = _mdat_payload(bytes(data))
    data[start:end] = bytes(end - start)
    assert probe(bytes(data)).coded_pixels == 64 * 64  # 3400 of them, under the bound
    monkeypatch.setattr(heif, "MAX_NAL_UNITS", 1000)
    with pytest.raises(UnsupportedImage, match="more than 1000 NAL units"):
        probe(bytes(data))
