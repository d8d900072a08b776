"""Decoding uploaded exposures and encoding HDR results; no HTTP, Redis or torch here.

Uploads: :func:`probe` reads a header (format, size, bit depth, EXIF exposure) without
decoding pixels, so limits are enforced before any allocation; :func:`verify` also checks
that the pixel data is complete (a bounded inflate at most, no decode); :func:`decode`
returns the stored samples exactly; :func:`to_unit_float` applies the model's input
convention.
Results: :func:`encode_result` / :func:`write_result` write OpenEXR, Radiance RGBE or a
mu-law tone-mapped PNG preview.
"""

from service.imaging.bracket import EXPOSURE_COUNT, check_bracket
from service.imaging.decode import (
    check_pixel_limit,
    decode,
    exif_exposure,
    probe,
    read_image,
    verify,
)
from service.imaging.exif import ExifExposure, parse_exif
from service.imaging.exr import (
    DEFAULT_EXR_COMPRESSIONS,
    HALF_MAX,
    ExrCompression,
    ExrDtype,
    decode_exr,
    encode_exr,
    set_exr_threads,
)
from service.imaging.formats import DecodedImage, ImageFormat, ImageInfo, sniff_format
from service.imaging.normalize import to_unit_float, widen_to_16bit
from service.imaging.radiance import decode_radiance, encode_radiance
from service.imaging.results import MEDIA_TYPES, ResultFormat, encode_result, write_result
from service.imaging.tonemap import MU, mu_law, preview_png

__all__ = [
    "DEFAULT_EXR_COMPRESSIONS",
    "EXPOSURE_COUNT",
    "HALF_MAX",
    "MEDIA_TYPES",
    "MU",
    "DecodedImage",
    "ExifExposure",
    "ExrCompression",
    "ExrDtype",
    "ImageFormat",
    "ImageInfo",
    "ResultFormat",
    "check_bracket",
    "check_pixel_limit",
    "decode",
    "decode_exr",
    "decode_radiance",
    "encode_exr",
    "encode_radiance",
    "encode_result",
    "exif_exposure",
    "mu_law",
    "parse_exif",
    "preview_png",
    "probe",
    "read_image",
    "set_exr_threads",
    "sniff_format",
    "to_unit_float",
    "verify",
    "widen_to_16bit",
    "write_result",
]
