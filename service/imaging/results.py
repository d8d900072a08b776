"""Result files: one table from format to encoder and media type, chosen by name or path.

The API picks the format from ``?format=``, the CLI from the output path's extension;
both end here, so a new format is one entry in each table, not a new branch anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import numpy as np

from service.imaging.exr import ExrDtype, encode_exr
from service.imaging.radiance import encode_radiance
from service.imaging.tonemap import preview_png


class ResultFormat(str, Enum):
    """The formats a finished job's HDR image can be downloaded in."""

    EXR = "exr"
    """OpenEXR, half or single float: lossless, the default."""
    HDR = "hdr"
    """Radiance RGBE: 32 bits per pixel, about 1% precision, read by every HDR tool."""
    PNG = "png"
    """An 8-bit mu-law tone-mapped preview, not HDR."""


MEDIA_TYPES: dict[ResultFormat, str] = {
    ResultFormat.EXR: "image/x-exr",
    ResultFormat.HDR: "image/vnd.radiance",
    ResultFormat.PNG: "image/png",
}

_ENCODERS: dict[ResultFormat, Callable[[np.ndarray, ExrDtype], bytes]] = {
    ResultFormat.EXR: encode_exr,
    ResultFormat.HDR: lambda hdr, _dtype: encode_radiance(hdr),
    ResultFormat.PNG: lambda hdr, _dtype: preview_png(hdr),
}


def encode_result(hdr: np.ndarray, fmt: ResultFormat | str, dtype: ExrDtype = "float32") -> bytes:
    """The bytes of ``hdr`` (H x W x 3 linear float) in ``fmt``; ``dtype`` matters for EXR only.

    Raises ``ValueError`` for an unknown format or dtype.
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    return _ENCODERS[ResultFormat(fmt)](hdr, dtype)


def write_result(
    path: str | os.PathLike[str], hdr: np.ndarray, dtype: ExrDtype = "float32"
) -> None:
    """Write ``hdr`` to ``path`` in the format its extension names (.exr, .hdr or .png)."""
    path = Path(path)
    extension = path.suffix.lower().lstrip(".")
    try:
        fmt = ResultFormat(extension)
    except ValueError:
        supported = ", ".join(f".{f.value}" for f in ResultFormat)
        raise ValueError(
            f"cannot tell the result format from {path.name!r}: use one of {supported}"
        ) from None
    path.write_bytes(encode_result(hdr, fmt, dtype))
