"""Test data made by the tests themselves, and the path of the shared golden case."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
#: Reference cases made with the official AFUNet code (see its README.md).
GOLDEN_DIR = Path(os.environ.get("HDR_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
GOLDEN_SEED0 = GOLDEN_DIR / "afunet-seed0"
GOLDEN_CHECKPOINT = GOLDEN_SEED0 / "checkpoint.pth"


def bracket_frames(
    height: int,
    width: int,
    evs: Sequence[float] = (-2.0, 0.0, 2.0),
    seed: int = 0,
    bits: int = 16,
) -> list[np.ndarray]:
    """Three exposures of one random smooth radiance map through a gamma-2.2 camera."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    radiance = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width] * 0.6 + 0.02
    top = 2**bits - 1
    frames = []
    for ev in evs:
        ldr = np.clip(radiance * 2.0**ev, 0, 1) ** (1 / 2.2)
        frames.append(np.round(ldr * top).astype(np.uint16 if bits == 16 else np.uint8))
    return frames


def write_scene(
    folder: Path,
    frames: Sequence[np.ndarray],
    evs: Sequence[float] | str | None = None,
    names: Sequence[str] | None = None,
) -> Path:
    """A Kalantari-style scene: TIFFs named input_1.tif... and exposure.txt (if ``evs``)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"input_{i + 1}.tif" for i in range(len(frames))]
    for frame, name in zip(frames, names, strict=True):
        tifffile.imwrite(folder / name, frame, photometric="rgb" if frame.ndim == 3 else None)
    if evs is not None:
        text = evs if isinstance(evs, str) else "\n".join(f"{v:.2f}" for v in evs) + "\n"
        (folder / "exposure.txt").write_text(text)
    return folder
