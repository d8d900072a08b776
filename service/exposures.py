"""An exposure set: three decoded LDR frames with their EV stops, validated once.

This is where user input becomes something the model can take: the CLI builds one from a
Kalantari-style scene folder or a list of files, the worker from uploaded bytes. It keeps
the frames as decoded (uint8/uint16) and converts only the crop a tile needs to float, so
a 12-megapixel set costs 216 MB instead of the 864 MB of a full 18-channel input tensor.
Torch-free, so the API can validate with it too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from service.errors import InvalidExposureSet, UnsupportedImage
from service.imaging import DecodedImage, check_bracket, read_image, widen_to_16bit

EXPOSURES = 3
#: Files a scene folder's frames may have, in order of preference (TIFF is Kalantari's).
SCENE_PATTERNS = (("*.tif", "*.tiff"), ("*.png",), ("*.jpg", "*.jpeg"))
EXPOSURE_FILE = "exposure.txt"


def check_exposure_values(evs: Sequence[float]) -> tuple[float, ...]:
    """Validate EV stops: three finite values, strictly increasing (short to long).

    EVs may be negative: only their differences matter, and Kalantari-style files use
    both ``0 2 4`` and ``-2 0 2``; exposure times ``2**ev`` are then always positive.
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


def parse_exposure_values(text: str, source: str = "exposure values") -> tuple[float, ...]:
    """Numbers separated by commas or whitespace ("-2,0,2", exposure.txt's lines)."""
    fields = [f for f in re.split(r"[,\s]+", text.strip()) if f]
    try:
        return tuple(float(f) for f in fields)
    except ValueError as exc:
        raise InvalidExposureSet(f"{source}: not a list of numbers: {text.strip()[:80]!r}") from exc


@dataclass(frozen=True)
class ExposureSet:
    """Three same-sized RGB frames, short to long, and their EV stops."""

    frames: tuple[np.ndarray, ...]
    """Decoded pixels, ``HxWx3`` uint8 or uint16, exactly as stored."""
    evs: tuple[float, ...]
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
    """Three image files, short to long, with their EV stops."""
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
    raise InvalidExposureSet(f"scene {scene}: no TIFF, PNG or JPEG exposures found")


def load_scene_dir(scene: str | Path) -> ExposureSet:
    """A Kalantari-style folder: three TIFFs sorted by name plus ``exposure.txt``.

    As the official loader does, frames are taken in file-name order and the i-th line of
    ``exposure.txt`` is the i-th frame's EV (exposure time ``2**ev``). Folders of three
    PNGs or JPEGs are read the same way.
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
    evs = parse_exposure_values(text, f"scene {scene}: {EXPOSURE_FILE}")
    try:
        return load_exposure_files(frames, evs)
    except (InvalidExposureSet, UnsupportedImage) as exc:
        if str(scene) in exc.message:
            raise
        raise type(exc)(f"scene {scene}: {exc.message}") from exc
