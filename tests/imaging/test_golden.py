"""The golden inputs (official 16-bit TIFFs) decode to the reference model input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.imaging import ImageFormat, read_image, to_unit_float

_REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = [
    root / "golden" / "afunet-seed0" for root in (_REPO / "shared", _REPO.parent / "shared")
]
GOLDEN = next((path for path in _CANDIDATES if path.is_dir()), _CANDIDATES[-1])

needs_golden = pytest.mark.skipif(
    not (GOLDEN / "input_1.tif").is_file(), reason="golden data (shared/golden) not present"
)


@needs_golden
def test_golden_tiff_decodes_as_16bit_rgb() -> None:
    image = read_image(GOLDEN / "input_1.tif")
    assert image.pixels.shape == (72, 100, 3)
    assert image.pixels.dtype == np.uint16
    assert (image.info.format, image.info.width, image.info.height) == (ImageFormat.TIFF, 100, 72)
    assert image.info.bit_depth == 16


@needs_golden
def test_golden_inputs_normalise_to_the_reference_ldr_channels_exactly() -> None:
    model_input = np.load(GOLDEN / "model_input.npy")  # 1 x 18 x H x W: per exposure hdr, ldr
    for index in range(3):
        ldr = to_unit_float(read_image(GOLDEN / f"input_{index + 1}.tif").pixels)
        reference = model_input[0, 6 * index + 3 : 6 * index + 6].transpose(1, 2, 0)
        np.testing.assert_array_equal(ldr, reference)
