"""Result files are chosen from one table, by format name or by path extension."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.imaging import (
    MEDIA_TYPES,
    ResultFormat,
    decode_exr,
    decode_radiance,
    encode_result,
    write_result,
)

MAGIC = {
    ResultFormat.EXR: b"\x76\x2f\x31\x01",
    ResultFormat.HDR: b"#?RADIANCE\n",
    ResultFormat.PNG: b"\x89PNG\r\n\x1a\n",
}


@pytest.fixture
def hdr() -> np.ndarray:
    return np.random.default_rng(9).random((16, 24, 3), dtype=np.float32)


def test_every_format_has_a_media_type() -> None:
    assert MEDIA_TYPES == {
        ResultFormat.EXR: "image/x-exr",
        ResultFormat.HDR: "image/vnd.radiance",
        ResultFormat.PNG: "image/png",
    }
    assert [f.value for f in ResultFormat] == ["exr", "hdr", "png"]


@pytest.mark.parametrize("fmt", list(ResultFormat))
def test_encode_result_writes_each_format(fmt: ResultFormat, hdr: np.ndarray) -> None:
    assert encode_result(hdr, fmt).startswith(MAGIC[fmt])
    assert encode_result(hdr, fmt.value).startswith(MAGIC[fmt])


def test_exr_dtype_is_honoured_and_half_files_are_smaller(hdr: np.ndarray) -> None:
    full = encode_result(hdr, ResultFormat.EXR, "float32")
    half = encode_result(hdr, ResultFormat.EXR, "float16")
    assert len(half) < len(full)
    np.testing.assert_array_equal(decode_exr(full), hdr)
    np.testing.assert_array_equal(decode_exr(half), hdr.astype(np.float16).astype(np.float32))


def test_unknown_formats_and_dtypes_are_value_errors(hdr: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_result(hdr, "tiff")
    with pytest.raises(ValueError, match="'float16' or 'float32'"):
        encode_result(hdr, ResultFormat.HDR, "float64")  # type: ignore[arg-type]


def test_write_result_chooses_the_format_by_extension(tmp_path: Path, hdr: np.ndarray) -> None:
    write_result(tmp_path / "out.exr", hdr)
    write_result(tmp_path / "out.HDR", hdr)
    write_result(tmp_path / "preview.png", hdr)
    write_result(tmp_path / "half.exr", hdr, dtype="float16")
    np.testing.assert_array_equal(decode_exr((tmp_path / "out.exr").read_bytes()), hdr)
    radiance = decode_radiance((tmp_path / "out.HDR").read_bytes())
    assert np.abs(radiance - hdr).max() < 0.01
    assert (tmp_path / "preview.png").read_bytes().startswith(MAGIC[ResultFormat.PNG])
    assert decode_exr((tmp_path / "half.exr").read_bytes()).shape == hdr.shape


@pytest.mark.parametrize("name", ["out.tif", "out", "out.exr.gz"])
def test_write_result_refuses_other_extensions_naming_the_supported_ones(
    tmp_path: Path, hdr: np.ndarray, name: str
) -> None:
    with pytest.raises(ValueError, match=r"\.exr, \.hdr, \.png"):
        write_result(tmp_path / name, hdr)
    assert not (tmp_path / name).exists()
