"""Test data made by the tests themselves, and the path of the shared golden case."""

from __future__ import annotations

import functools
import io
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from service.queue.jobs import JobParams

REPO = Path(__file__).resolve().parents[1]
#: Reference cases made with the official AFUNet code (see its README.md).
GOLDEN_DIR = Path(os.environ.get("HDR_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
GOLDEN_SEED0 = GOLDEN_DIR / "afunet-seed0"
GOLDEN_CHECKPOINT = GOLDEN_SEED0 / "checkpoint.pth"


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root and return what it
    printed; the test fails with its stderr unless it exits 0. What a module imports
    shows only there: a test process has imported everything already."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def write_label(folder: Path, label: np.ndarray, name: str = "HDRImg.hdr") -> Path:
    """An HDR label next to a scene's exposures (Radiance RGBE, as the datasets ship it)."""
    from service.imaging import encode_radiance

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(encode_radiance(label))
    return path


# --- the service's uploads and model repositories (tests/api, tests/worker) ----------------


def tiff_file(frame: np.ndarray) -> bytes:
    """An RGB TIFF of ``frame`` as a client would upload it."""
    stream = io.BytesIO()
    tifffile.imwrite(stream, frame, photometric="rgb")
    return stream.getvalue()


def golden_uploads() -> list[tuple[str, bytes]]:
    """The golden case's three TIFFs, short to long: (file name, bytes)."""
    return [(p.name, p.read_bytes()) for p in sorted(GOLDEN_SEED0.glob("input_*.tif"))]


def bracket_uploads(
    height: int = 48,
    width: int = 64,
    evs: Sequence[float] = (-2.0, 0.0, 2.0),
    seed: int = 0,
    bits: int = 16,
) -> list[tuple[str, bytes]]:
    """Three TIFF uploads of :func:`bracket_frames`, short to long: (file name, bytes)."""
    frames = bracket_frames(height, width, evs, seed, bits)
    return [(f"ev{ev:+g}.tif", tiff_file(frame)) for ev, frame in zip(evs, frames, strict=True)]


def exposure_files(uploads: Sequence[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes]]]:
    """``uploads`` as the ``files=`` of an httpx multipart request (field ``exposures``)."""
    return [("exposures", (name, data)) for name, data in uploads]


def write_model_repo(
    root: Path,
    checkpoint: Path = GOLDEN_CHECKPOINT,
    tile_size: int = 128,
    overlap: int = 8,
    batch: int = 1,
) -> Path:
    """A model repository holding ``afunet/1/model.pth`` (a link to ``checkpoint``)."""
    folder = root / "afunet"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.pth").symlink_to(checkpoint)
    (folder / "config.yaml").write_text(
        "architecture: afunet\nbackends: [torch]\n"
        f"tiling:\n  tile_size: {tile_size}\n  overlap: {overlap}\n  batch: {batch}\n"
    )
    return root


def unit_frames(exposures) -> list[np.ndarray]:
    """The exposures' frames as the unit-range float32 images the model input is built of."""
    from service.imaging import to_unit_float

    return [to_unit_float(f) for f in exposures.frames]


def whole_input(exposures) -> np.ndarray:
    """The ``(1, 18, H, W)`` model input of a whole exposure set (one tile)."""
    from service.engines.base import TileBatch

    crop = exposures.raw_crop(0, 0, exposures.height, exposures.width)
    return TileBatch(crop[None], exposures.evs).model_input()


def tile_batch(exposures):
    """The whole exposure set as a one-tile engine batch."""
    from service.engines.base import TileBatch

    crop = exposures.raw_crop(0, 0, exposures.height, exposures.width)
    return TileBatch(crop[None], exposures.evs)


@functools.cache
def golden_output(evs: tuple[float, ...]) -> np.ndarray:
    """``HxWx3`` output of our AFUNet on the golden frames with ``evs`` (one forward pass).

    ``model_output.npy`` is the official output for the golden ``exposure.txt`` as written
    (-2, 0, 2), which only a scene folder passes on verbatim; the API and ``--ev`` shift
    EVs to the shortest exposure, so their reference is this, on (0, 2, 4). Our model equals
    the official one (tests/model/test_golden.py), so this stands in for the official
    output on those EVs.
    """
    import torch

    from service.engines.base import TileBatch
    from service.exposures import load_scene_dir
    from service.model.checkpoint import load_afunet

    exposures = load_scene_dir(GOLDEN_SEED0)
    crop = exposures.raw_crop(0, 0, exposures.height, exposures.width)
    x = TileBatch(crop[None], evs).model_input()
    with torch.inference_mode():
        out = load_afunet(GOLDEN_CHECKPOINT)(torch.from_numpy(x)).numpy()
    return np.ascontiguousarray(out[0].transpose(1, 2, 0))


def job_params(uploads: Sequence[tuple[str, bytes]], **changes: Any) -> JobParams:
    """Job parameters as the API makes them for ``uploads`` (short to long, EVs -2, 0, 2)."""
    fields: dict[str, Any] = {
        "exposure_values": (-2.0, 0.0, 2.0),
        "names": tuple(name for name, _ in uploads),
        **changes,
    }
    return JobParams(**fields)
