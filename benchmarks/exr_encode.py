"""OpenEXR result encoding: time, size and exactness of every compression, 1 thread vs N.

The content stands in for a model output: the HDR label of a synthetic 1000x1500 scene
(``service.quality.synth``: smooth illumination, textured surfaces, saturated sky and
lights, values in [0, 1]) plus a small Gaussian error like a network's (sigma 0.003,
clipped to [0, 1]), so the float32 mantissas are as dense as a sigmoid's output. How far a
file shrinks depends on the content, but little here: the noise-free label alone, computed
in float32, still leaves ZIP only 5% to take.

Each case goes through :func:`service.imaging.encode_exr` and :func:`decode_exr`, the
service's own path, for every compression OpenEXR has, float32 and float16, with
OpenEXR's thread pool at 0 (compression on the calling thread) and at N threads. Repeats
are interleaved (every case once, then again) so that a neighbour's load on a shared
machine spreads over all cases; times are medians. ``max error`` is the
largest absolute difference from the samples given to the file (for float16: the input
rounded to half), so 0 means lossless.

    python -m benchmarks.exr_encode [--repeats 5] [--threads N] [--json exr.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.commands.argtypes import frame_size
from service.imaging.exr import (
    LOSSLESS_COMPRESSIONS,
    ExrCompression,
    ExrDtype,
    decode_exr,
    default_exr_threads,
    encode_exr,
    set_exr_threads,
)
from service.quality.synth import make_scene

DTYPES: tuple[ExrDtype, ...] = ("float32", "float16")


@dataclass(frozen=True)
class Case:
    """One measured combination: its median times over the repeats, size and exactness."""

    dtype: str
    compression: str
    threads: int
    encode_s: float
    decode_s: float
    bytes: int
    max_error: float
    lossless: bool


def model_like_output(height: int, width: int, seed: int) -> np.ndarray:
    """A synthetic scene's [0, 1] HDR label with a network-sized error added."""
    label = make_scene(seed, height, width).label
    noise = np.random.default_rng(seed).normal(0.0, 0.003, label.shape)
    return np.clip(label + noise, 0.0, 1.0).astype(np.float32)


def measure(
    hdr: np.ndarray,
    compressions: list[ExrCompression],
    threads: list[int],
    repeats: int,
) -> list[Case]:
    """Every (dtype, compression, threads) case, repeats interleaved; medians per case."""
    keys = [(d, c, t) for d in DTYPES for c in compressions for t in threads]
    encode: dict[tuple, list[float]] = {key: [] for key in keys}
    decode: dict[tuple, list[float]] = {key: [] for key in keys}
    results: dict[tuple, tuple[int, float]] = {}
    written = {
        d: hdr.astype(np.float16).astype(np.float32) if d == "float16" else hdr for d in DTYPES
    }
    for _ in range(repeats):
        for key in keys:
            dtype, compression, count = key
            set_exr_threads(count)
            start = time.perf_counter()
            data = encode_exr(hdr, dtype, compression)
            encode[key].append(time.perf_counter() - start)
            start = time.perf_counter()
            back = decode_exr(data)
            decode[key].append(time.perf_counter() - start)
            error = float(np.abs(back - written[dtype]).max())
            results[key] = (len(data), error)
    return [
        Case(
            dtype=dtype,
            compression=compression.value,
            threads=count,
            encode_s=statistics.median(encode[(dtype, compression, count)]),
            decode_s=statistics.median(decode[(dtype, compression, count)]),
            bytes=results[(dtype, compression, count)][0],
            max_error=results[(dtype, compression, count)][1],
            lossless=results[(dtype, compression, count)][1] == 0.0,
        )
        for dtype, compression, count in keys
    ]


def table(cases: list[Case], threads: list[int]) -> str:
    """A Markdown table: one row per dtype and compression, times per thread count."""
    raw = {c.dtype: c.bytes for c in cases if c.compression == ExrCompression.NONE.value}
    head = ["dtype", "compression", "exact", "max error", "MB", "vs none"]
    head += [f"encode {t} thr" for t in threads] + [f"decode {t} thr" for t in threads]
    align = ["---"] * 3 + ["---:"] * (len(head) - 3)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    rows: dict[tuple[str, str], dict[int, Case]] = {}
    for case in cases:
        rows.setdefault((case.dtype, case.compression), {})[case.threads] = case
    for (dtype, compression), by_threads in rows.items():
        first = next(iter(by_threads.values()))
        cells = [
            dtype,
            compression,
            "yes" if first.lossless else "no",
            f"{first.max_error:.2g}",
            f"{first.bytes / 1e6:.2f}",
            f"{first.bytes / raw[dtype]:.0%}",
        ]
        cells += [f"{by_threads[t].encode_s:.3f}" for t in threads]
        cells += [f"{by_threads[t].decode_s:.3f}" for t in threads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=frame_size, default="1500x1000", help="WIDTHxHEIGHT (default 1500x1000)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per case")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_exr_threads(),
        help="the pool size compared with 0 (default: this process's CPUs)",
    )
    parser.add_argument(
        "--compression",
        action="append",
        choices=[c.value for c in ExrCompression],
        help="measure only these (repeatable; default: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every case as JSON")
    args = parser.parse_args(argv)
    width, height = args.size
    compressions = [
        c for c in ExrCompression if not args.compression or c.value in args.compression
    ]
    threads = sorted({0, args.threads})
    hdr = model_like_output(height, width, args.seed)
    cases = measure(hdr, compressions, threads, args.repeats)
    print(f"{width}x{height} RGB, median of {args.repeats} interleaved runs, seconds")
    print(table(cases, threads))
    lossy = sorted({c.compression for c in cases if not c.lossless and c.dtype == "float32"})
    unexpected = {ExrCompression(c) for c in lossy} & LOSSLESS_COMPRESSIONS
    if unexpected:
        print(f"NOT EXACT although listed lossless: {sorted(c.value for c in unexpected)}")
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
