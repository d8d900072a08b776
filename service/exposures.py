"""An exposure set: three decoded LDR frames with their EV stops, validated once.

This is where user input becomes something the model can take: the CLI builds one from a
Kalantari-style scene folder or a list of files, the worker from uploaded bytes. It keeps
the frames as decoded (uint8/uint16) and converts only the crop a tile needs to float, so
a 12-megapixel set costs 216 MB instead of the 864 MB of a full 18-channel input tensor.
Torch-free, so the API can validate with it too.

One EV convention. The model divides each frame by ``2**EV``, so the absolute EVs matter,
not only their differences: ``0,2,4`` and ``-2,0,2`` give different outputs. The official
data (Kalantari's ``exposure.txt``) holds stops relative to the shortest exposure, short to
long (``0 2 4``, ``0 3 6``), and the official code reads the file as it is. So a scene
folder's ``exposure.txt`` is read verbatim, exactly as the official code reads it
(:func:`parse_exposure_file`), and every other source (form fields, exposure times, EXIF,
``--ev``) is brought to that convention with :func:`relative_to_shortest`.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from service.errors import InvalidExposureSet, UnsupportedImage
from service.imaging import DecodedImage, check_bracket, read_image, widen_to_16bit

EXPOSURES = 3
#: Files a scene folder's frames may have, in order of preference (TIFF is Kalantari's;
#: iPhones name their HEIC files in capitals).
SCENE_PATTERNS = (
    ("*.tif", "*.tiff"),
    ("*.png",),
    ("*.jpg", "*.jpeg"),
    ("*.heic", "*.HEIC", "*.heif", "*.HEIF"),
)
EXPOSURE_FILE = "exposure.txt"
#: A plain decimal number: Python's float() would also take ``1_0`` (ten), ``1e3``, ``nan``.
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)", re.ASCII)


def check_exposure_values(evs: Sequence[float]) -> tuple[float, ...]:
    """Validate EV stops: three finite values, strictly increasing (short to long).

    The values are taken as they are (exposure time ``2**ev``, always positive): a scene
    file may hold negative stops and the official code uses them so. Other sources are
    made relative to the shortest exposure first (:func:`relative_to_shortest`).
    """
    values = tuple(float(v) for v in evs)
    if len(values) != EXPOSURES:
        raise InvalidExposureSet(f"expected {EXPOSURES} exposure values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InvalidExposureSet(f"exposure values must be finite numbers, got {list(values)}")
    if any(b <= a for a, b in pairwise(values)):
        raise InvalidExposureSet(
            "exposure values must be strictly increasing (short to long exposure),"
            f" got {list(values)}"
        )
    if max(abs(v) for v in values) > 64:
        raise InvalidExposureSet(f"exposure values beyond +-64 EV are implausible: {list(values)}")
    return values


def ev_from_exposure_times(times: Sequence[float]) -> tuple[float, ...]:
    """EV stops (``log2`` of seconds) of exposure times; each must be positive and finite."""
    out = []
    for t in times:
        t = float(t)
        if not math.isfinite(t) or t <= 0:
            raise InvalidExposureSet(
                f"exposure times must be positive seconds, got {[float(x) for x in times]}"
            )
        out.append(math.log2(t))
    return tuple(out)


def relative_to_shortest(evs: Sequence[float]) -> tuple[float, ...]:
    """EV stops relative to the shortest exposure, the convention of the official data.

    Kalantari's ``exposure.txt`` files, on which the model was trained, start at 0 for the
    shortest exposure (``0 2 4``), so the model's output is in that exposure's unit. Any EVs
    a user gives (``-2,0,2``, ``log2`` of seconds, EXIF) are shifted to that origin, which
    makes ``-2,0,2`` and ``0,2,4`` the same request. The values must be finite.
    """
    values = tuple(float(v) for v in evs)
    shortest = min(values, default=0.0)
    return tuple(v - shortest for v in values)


def parse_exposure_values(text: str, source: str = "exposure values") -> tuple[float, ...]:
    """Plain decimal numbers separated by commas or whitespace (``"-2,0,2"``, ``"0.01 0.04"``).

    Typed input (form fields, ``--ev``) only: ``float()`` would read ``0,1_0,2_0`` as 0, 10,
    20, and take ``1e3``, ``nan`` and ``inf`` too; a value that is not a plain decimal is
    refused by name.
    """
    fields = [f for f in re.split(r"[,\s]+", text.strip()) if f]
    for field in fields:
        if not _DECIMAL.fullmatch(field):
            raise InvalidExposureSet(
                f"{source}: {field[:40]!r} is not a plain decimal number (such as -2, 0 or 0.5)"
            )
    return tuple(float(f) for f in fields)


def parse_exposure_file(text: str, source: str = EXPOSURE_FILE) -> tuple[float, ...]:
    """The EVs of an ``exposure.txt`` read as the official code reads it (``np.loadtxt``).

    Whitespace-separated numbers, ``#`` comments, values verbatim: no shift to the shortest
    exposure, so a scene gives the model exactly the input the official test code builds.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            values = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=1)
    except ValueError as exc:
        raise InvalidExposureSet(f"{source}: not a list of numbers: {text.strip()[:80]!r}") from exc
    return tuple(float(v) for v in values.ravel())


@dataclass(frozen=True)
class ExposureSet:
    """Three same-sized RGB frames, short to long, and their EV stops."""

    frames: tuple[np.ndarray, ...]
    """Decoded pixels, ``HxWx3`` uint8 or uint16, exactly as stored."""
    evs: tuple[float, ...]
    """EV stops as the model takes them (exposure time ``2**ev``), short to long."""
    names: tuple[str, ...]

    @classmethod
    def from_images(
        cls, images: Sequence[DecodedImage], evs: Sequence[float], names: Sequence[str]
    ) -> ExposureSet:
        """Validate count, sizes and EVs; the frames must already be in exposure order."""
        check_bracket([im.info for im in images], list(names))
        return cls(tuple(im.pixels for im in images), check_exposure_values(evs), tuple(names))

    @property
    def height(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.frames[0].shape[1])

    def raw_crop(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """``(3, h, w, 3)`` uint16: the three frames' crop at ``(y, x)`` as 16-bit values."""
        return np.stack([widen_to_16bit(f[y : y + h, x : x + w]) for f in self.frames])


def load_exposure_files(paths: Sequence[str | Path], evs: Sequence[float]) -> ExposureSet:
    """Three image files, short to long, with their EV stops taken as given."""
    if len(paths) != EXPOSURES:
        raise InvalidExposureSet(f"expected {EXPOSURES} exposure files, got {len(paths)}")
    images = [read_image(p) for p in paths]
    return ExposureSet.from_images(images, evs, [Path(p).name for p in paths])


def _scene_frames(scene: Path) -> list[Path]:
    for patterns in SCENE_PATTERNS:
        found = sorted(
            {p for pattern in patterns for p in scene.glob(pattern) if p.is_file()},
            key=lambda p: p.name,
        )
        if found:
            if len(found) != EXPOSURES:
                raise InvalidExposureSet(
                    f"scene {scene}: expected {EXPOSURES} exposures, found {len(found)}:"
                    f" {', '.join(p.name for p in found)}"
                )
            return found
    raise InvalidExposureSet(f"scene {scene}: no TIFF, PNG, JPEG or HEIC exposures found")


def load_scene_dir(scene: str | Path) -> ExposureSet:
    """A Kalantari-style folder: three TIFFs sorted by name plus ``exposure.txt``.

    As the official loader does, frames are taken in file-name order and the i-th value of
    ``exposure.txt`` is the i-th frame's EV (exposure time ``2**ev``), verbatim (see
    :func:`parse_exposure_file`). Folders of three PNGs, JPEGs or HEICs are read the same way.
    """
    scene = Path(scene)
    if not scene.is_dir():
        raise InvalidExposureSet(f"scene {scene} is not a directory")
    frames = _scene_frames(scene)
    exposure_file = scene / EXPOSURE_FILE
    try:
        text = exposure_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidExposureSet(f"scene {scene}: cannot read {EXPOSURE_FILE}: {exc}") from exc
    evs = parse_exposure_file(text, f"scene {scene}: {EXPOSURE_FILE}")
    try:
        return load_exposure_files(frames, evs)
    except (InvalidExposureSet, UnsupportedImage) as exc:
        if str(scene) in exc.message:
            raise
        raise type(exc)(f"scene {scene}: {exc.message}") from exc
