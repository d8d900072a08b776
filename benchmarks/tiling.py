"""Tiled inference: how close to full-frame, how fast, and how much memory.

Two measurements, printed as tables:

* ``--gap``: one synthetic 512x512 scene through the model as a single full-frame tile and
  through tile plans of several sizes; PSNR-mu of each tiled result against the full-frame
  one (AFUNet's channel attention spans the whole frame, so tiles only approximate it) and
  the throughput of each plan, side by side in one process.
* ``--rss WxH ...``: peak resident memory of a whole frame of that size through the default
  tile plan, each size in a fresh process (so the peak is its own), next to the memory the
  process holds before inference (interpreter, torch, model, the decoded frames).

    python -m benchmarks.tiling --checkpoint CKPT --gap
    python -m benchmarks.tiling --checkpoint CKPT --rss 2048x2048 4000x3000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.child import run_in_child
from service.commands.argtypes import frame_size
from service.config import DEFAULT_TILE_BATCH, DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE
from service.engines.pipeline import reconstruct
from service.engines.runtime import keep_freed_memory, peak_rss_bytes
from service.engines.tiling import TilePlan
from service.engines.torch_engine import TorchEngine
from service.exposures import ExposureSet
from service.quality.metrics import psnr_mu
from service.quality.synth import make_scene

GAP_TILES = ((64, 16), (128, 32), (192, 32), (256, 32), (320, 32), (384, 32))


def _exposures(height: int, width: int, seed: int) -> ExposureSet:
    scene = make_scene(seed, height, width)
    return ExposureSet(scene.frames, scene.evs, ("short", "reference", "long"))


def gap(checkpoint: Path, size: int, seed: int, batch: int) -> list[dict]:
    keep_freed_memory()
    engine = TorchEngine.from_checkpoint(checkpoint, "cpu")
    exposures = _exposures(size, size, seed)
    start = time.perf_counter()
    full = reconstruct(engine, exposures, TilePlan.build(size, size, None, 0))
    full_s = time.perf_counter() - start
    rows = [
        {
            "tile": "full frame",
            "overlap": 0,
            "tiles": 1,
            "seconds": full_s,
            "psnr_mu_db": float("inf"),
        }
    ]
    print(f"{'tile':>10} {'overlap':>8} {'tiles':>6} {'s/frame':>8} {'MP/s':>8} {'PSNR-mu':>8}")
    for tile, overlap in GAP_TILES:
        plan = TilePlan.build(size, size, tile, overlap)
        reconstruct(engine, exposures, plan, batch)  # warm the layouts of this shape
        start = time.perf_counter()
        tiled = reconstruct(engine, exposures, plan, batch)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "tile": tile,
                "overlap": overlap,
                "tiles": len(plan),
                "seconds": seconds,
                "psnr_mu_db": psnr_mu(tiled, full),
            }
        )
    for row in rows:
        print(
            f"{row['tile']!s:>10} {row['overlap']:>8} {row['tiles']:>6} {row['seconds']:8.1f} "
            f"{size * size / 1e6 / row['seconds']:8.4f} {row['psnr_mu_db']:8.1f}"
        )
    return rows


def rss_child(checkpoint: str, frames: str) -> dict:
    """One frame through the default plan; runs in a fresh process (its peak is its own)."""
    keep_freed_memory()
    data = np.load(frames)
    exposures = ExposureSet(
        tuple(data[f"f{i}"] for i in range(3)),
        tuple(float(v) for v in data["evs"]),
        ("s", "r", "l"),
    )
    engine = TorchEngine.from_checkpoint(checkpoint, "cpu")
    before = peak_rss_bytes()
    plan = TilePlan.build(
        exposures.height, exposures.width, DEFAULT_TILE_SIZE, DEFAULT_TILE_OVERLAP
    )
    start = time.perf_counter()
    out = reconstruct(engine, exposures, plan, DEFAULT_TILE_BATCH)
    seconds = time.perf_counter() - start
    return {
        "tiles": len(plan),
        "seconds": seconds,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak_rss_bytes(),
        "finite": bool(np.isfinite(out).all()),
    }


def rss(checkpoint: Path, sizes: list[str], seed: int) -> list[dict]:
    rows = []
    print(f"{'frame':>10} {'tiles':>6} {'s/frame':>8} {'RSS before MB':>14} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for text in sizes:
            width, height = frame_size(text)
            exposures = _exposures(height, width, seed)
            frames = Path(tmp) / f"{text}.npz"
            np.savez(
                frames,
                f0=exposures.frames[0],
                f1=exposures.frames[1],
                f2=exposures.frames[2],
                evs=np.array(exposures.evs),
            )
            del exposures
            measured = run_in_child(
                "benchmarks.tiling:rss_child",
                {"checkpoint": str(checkpoint), "frames": str(frames)},
            )
            row = {"frame": text, **measured}
            rows.append(row)
            print(
                f"{text:>10} {row['tiles']:>6} {row['seconds']:8.1f} "
                f"{row['rss_before_bytes'] / 2**20:14.0f} {row['peak_rss_bytes'] / 2**20:12.0f}",
                flush=True,
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--gap", action="store_true", help="tiled-vs-full table at --size")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=DEFAULT_TILE_BATCH)
    parser.add_argument("--rss", nargs="*", default=[], metavar="WxH")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    if args.gap:
        results["gap"] = gap(args.checkpoint, args.size, args.seed, args.batch)
    if args.rss:
        results["rss"] = rss(args.checkpoint, args.rss, args.seed)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
