"""Checks on a set of exposures taken together, answered from their headers alone."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import InvalidExposureSet
from service.imaging.formats import ImageInfo

EXPOSURE_COUNT = 3
"""AFUNet merges exactly three exposures: short, reference (middle), long."""


def check_bracket(
    infos: Sequence[ImageInfo],
    names: Sequence[str | None] | None = None,
    count: int = EXPOSURE_COUNT,
) -> None:
    """Raise :class:`InvalidExposureSet` unless there are ``count`` images of one size.

    The network aligns exposures pixel for pixel, so sizes must match exactly; bit depths
    and formats may differ (each is normalised on its own).
    """
    if len(infos) != count:
        raise InvalidExposureSet(f"expected {count} exposures, got {len(infos)}")
    given: Sequence[str | None] = names if names is not None else [None] * len(infos)
    labels = [name or f"exposure {i + 1}" for i, name in enumerate(given)]
    reference = infos[0]
    for info, name in zip(infos[1:], labels[1:], strict=False):
        if (info.width, info.height) != (reference.width, reference.height):
            raise InvalidExposureSet(
                f"exposure sizes differ: {labels[0]} is {reference.width}x{reference.height}, "
                f"{name} is {info.width}x{info.height}"
            )
