"""A bracket is three exposures of one size, judged from their headers."""

from __future__ import annotations

import pytest

from service.errors import InvalidExposureSet
from service.imaging import ImageFormat, ImageInfo, check_bracket


def _info(width: int = 64, height: int = 48, bit_depth: int = 16) -> ImageInfo:
    return ImageInfo(ImageFormat.TIFF, width, height, channels=3, bit_depth=bit_depth)


def test_three_exposures_of_one_size_pass_whatever_their_depths() -> None:
    check_bracket([_info(), _info(bit_depth=8), _info()])


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_other_counts_are_invalid_exposure_sets(count: int) -> None:
    with pytest.raises(InvalidExposureSet, match=f"expected 3 exposures, got {count}") as caught:
        check_bracket([_info()] * count)
    assert caught.value.http_status == 422


def test_mismatched_sizes_name_both_files() -> None:
    infos = [_info(), _info(), _info(width=65)]
    with pytest.raises(InvalidExposureSet, match=r"a\.tif is 64x48, c\.tif is 65x48"):
        check_bracket(infos, names=["a.tif", "b.tif", "c.tif"])
    with pytest.raises(InvalidExposureSet, match="exposure 3 is 65x48"):
        check_bracket(infos)
