"""Labelled test sets on disk: Kalantari's layout and the Hu and Tel variants of it.

Every public HDR deghosting test set is a folder of scene folders, each holding three LDR
TIFFs (sorted by name = short to long), a text file of EV stops (exposure time
``2 ** ev``, one per line) and the HDR label. They differ only in file names, which the
official AFUNet evaluation passes as options; :data:`LAYOUTS` holds its values:

=========  ============  =================  ===============  ==============================
layout     test folder   frames             exposure file    label
=========  ============  =================  ===============  ==============================
kalantari  Test/Test-set ``*.tif``          exposure.txt     HDRImg.hdr
tel        Test          ``*.tif``          exposure.txt     HDRImg.hdr
hu         Test          ``input*.tif``     input_exp.txt    ref_hdr_aligned_linear.hdr
=========  ============  =================  ===============  ==============================

Hu's scene folders also hold other TIFFs (the reference-exposure stack), hence its prefix.
A problem in one scene raises :class:`InvalidDataset` (or the imaging error) with the
scene's name in the message, so an evaluation can report it and go on with the others.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import InvalidExposureSet, ServiceError, UnsupportedImage
from service.exposures import EXPOSURES, ExposureSet, load_exposure_files, parse_exposure_file
from service.imaging import decode_exr, decode_radiance

log = logging.getLogger(__name__)

_FRAME_SUFFIXES = (".tif", ".tiff")


class InvalidDataset(ServiceError):
    """A test set or one of its scenes is missing a file or holds an unusable one."""

    code = "invalid_dataset"
    http_status = 422
    retryable = False


@dataclass(frozen=True)
class Layout:
    """File names of one test set's scene folders (the official test options)."""

    name: str
    test_path: str
    """Where the test scenes sit below the dataset root (``--test_path``)."""
    ldr_prefix: str = ""
    """Frames are the TIFFs whose names start with this (``--ldr_prefix``)."""
    ldr_folder: str | None = None
    """Sub-folder of a scene holding its frames, if any (``--ldr_folder_name``)."""
    exposure_file: str = "exposure.txt"
    label_file: str = "HDRImg.hdr"

    def with_overrides(self, **changes: str | None) -> Layout:
        """This layout with the given fields replaced (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


LAYOUTS: dict[str, Layout] = {
    "kalantari": Layout("kalantari", "Test/Test-set"),
    "tel": Layout("tel", "Test"),
    "hu": Layout(
        "hu",
        "Test",
        ldr_prefix="input",
        exposure_file="input_exp.txt",
        label_file="ref_hdr_aligned_linear.hdr",
    ),
}


@dataclass(frozen=True)
class LabelledScene:
    """One test scene: its exposures and the HDR label they should reconstruct."""

    name: str
    exposures: ExposureSet
    label: np.ndarray
    """``H x W x 3`` float32 linear RGB."""


def _looks_like_scene(folder: Path, layout: Layout) -> bool:
    return (folder / layout.label_file).is_file() or (folder / layout.exposure_file).is_file()


def find_scenes(root: str | Path, layout: Layout) -> list[Path]:
    """The scene folders of a test set, sorted by name (the official order).

    ``root`` may be the folder of scenes, the dataset root holding the layout's test
    folder (``Kal`` for ``Kal/Test/Test-set``), or a single scene folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidDataset(f"dataset {root} is not a directory")
    if _looks_like_scene(root, layout):
        return [root]
    nested = root / layout.test_path
    if nested.is_dir():
        log.info("using the %s test folder %s", layout.name, nested)
        root = nested
    scenes = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not scenes:
        raise InvalidDataset(f"dataset {root} holds no scene folders")
    return scenes


def _frame_paths(scene: Path, layout: Layout) -> list[Path]:
    folder = scene / layout.ldr_folder if layout.ldr_folder else scene
    found = sorted(
        (
            p
            for p in folder.glob(f"{layout.ldr_prefix}*")
            if p.is_file() and p.suffix.lower() in _FRAME_SUFFIXES
        ),
        key=lambda p: p.name,
    )
    if len(found) != EXPOSURES:
        names = ", ".join(p.name for p in found) or "none"
        raise InvalidDataset(
            f"scene {scene.name}: expected {EXPOSURES} TIFF exposures"
            f" {layout.ldr_prefix}*.tif in {folder}, found {len(found)} ({names})"
        )
    return found


def _read_evs(scene: Path, layout: Layout) -> tuple[float, ...]:
    path = scene / layout.exposure_file
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidDataset(
            f"scene {scene.name}: exposure file {layout.exposure_file} is missing"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidDataset(
            f"scene {scene.name}: cannot read {layout.exposure_file}: {exc}"
        ) from exc
    try:
        return parse_exposure_file(text, f"scene {scene.name}: {layout.exposure_file}")
    except InvalidExposureSet as exc:
        raise InvalidDataset(exc.message) from exc


def read_label(path: str | Path) -> np.ndarray:
    """An HDR label: Radiance ``.hdr`` (the datasets' format) or OpenEXR ``.exr``."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix.lower() == ".exr":
        return decode_exr(data)
    return decode_radiance(data, path.name)


def _read_label(scene: Path, layout: Layout, shape: tuple[int, ...]) -> np.ndarray:
    path = scene / layout.label_file
    if not path.is_file():
        raise InvalidDataset(f"scene {scene.name}: label {layout.label_file} is missing")
    try:
        label = read_label(path)
    except UnsupportedImage as exc:
        raise InvalidDataset(f"scene {scene.name}: label {exc.message}") from exc
    except OSError as exc:
        raise InvalidDataset(f"scene {scene.name}: cannot read {layout.label_file}: {exc}") from exc
    if label.shape != shape:
        raise InvalidDataset(
            f"scene {scene.name}: label {layout.label_file} is"
            f" {label.shape[1]}x{label.shape[0]}, the exposures are {shape[1]}x{shape[0]}"
        )
    if not np.isfinite(label).all():
        raise InvalidDataset(f"scene {scene.name}: label {layout.label_file} holds NaN or inf")
    return label


def load_scene(scene: str | Path, layout: Layout) -> LabelledScene:
    """Read one scene folder; every error names the scene and what is wrong with it."""
    scene = Path(scene)
    frames = _frame_paths(scene, layout)
    evs = _read_evs(scene, layout)
    try:
        exposures = load_exposure_files(frames, evs)
    except (InvalidExposureSet, UnsupportedImage) as exc:
        raise InvalidDataset(f"scene {scene.name}: {exc.message}") from exc
    except OSError as exc:
        raise InvalidDataset(f"scene {scene.name}: cannot read an exposure: {exc}") from exc
    label = _read_label(scene, layout, (exposures.height, exposures.width, 3))
    return LabelledScene(scene.name, exposures, label)
