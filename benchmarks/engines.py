"""Engine benchmark: throughput, latency, memory and fidelity of every backend, side by side.

    python -m benchmarks.engines --checkpoint CKPT --sizes 512x512 \
        --backends official-style,torch,onnxruntime --json out.json

Each case (backend variant x precision x frame size) runs in a fresh child process
(:func:`benchmarks.child.run_in_child`), so its peak host RSS is its own, and is timed
the way the field's benchmark scripts do it:
warm-up runs first, then several timed runs of a whole frame through the service's
pipeline (preprocessing, tiles, engine, blending), with the device synchronised (every
engine returns host arrays). Every case sees the same synthetic scene; its output is
compared with the fp32 full-frame PyTorch reference (PSNR-mu and max abs error).

Backend variants: ``official-style`` (an eager forward that moves data like the official
code, see ``official_style.py``), ``torch``, ``onnxruntime``, ``tensorrt``; modifiers
after colons: ``compile`` (torch.compile), ``graphs`` (CUDA graphs), ``default-malloc`` /
``tuned-malloc`` (glibc's default allocator behaviour, or the service's start-up tuning,
which is the default for every backend but ``official-style``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.child import ChildFailed, run_in_child
from service.commands.argtypes import frame_sizes
from service.engines.tiling import TilePlan
from service.quality.metrics import psnr_mu

BACKENDS = ("official-style", "torch", "onnxruntime", "tensorrt")
MODIFIERS = ("compile", "graphs", "default-malloc", "tuned-malloc")


@dataclass(frozen=True)
class Case:
    """One measurement."""

    backend: str
    precision: str
    height: int
    width: int
    tile: int | None
    """Tile edge, or None for the whole frame as one tile."""
    overlap: int
    batch: int
    runs: int
    warmup: int
    device: str

    @property
    def name(self) -> str:
        return self.backend.split(":")[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.backend.split(":")[1:])

    @property
    def label(self) -> str:
        tiles = "full" if self.tile is None else f"tile {self.tile}"
        return f"{self.backend} {self.precision} {self.width}x{self.height} {tiles}"


@dataclass
class Result:
    case: Case
    ok: bool
    reason: str = ""
    latency_s: list[float] = field(default_factory=list)
    peak_rss_bytes: int = 0
    peak_device_bytes: int | None = None
    device: str = ""
    output: str = ""
    psnr_mu_db: float | None = None
    max_abs: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.latency_s) if self.latency_s else math.nan

    @property
    def megapixels_per_s(self) -> float:
        return self.case.height * self.case.width / 1e6 / self.median_s


# --- the child: one case in its own process -------------------------------------------------


def _engine(case: Case, checkpoint: Path, cache: Path) -> Any:
    from service.engines.torch_engine import TorchEngine, resolve_device
    from service.model.checkpoint import load_afunet

    mods = case.modifiers
    if case.name == "official-style":
        from benchmarks.official_style import OfficialStyleEngine

        return OfficialStyleEngine(load_afunet(checkpoint))
    if case.name == "torch":
        return TorchEngine(
            load_afunet(checkpoint),
            resolve_device(case.device),
            case.precision,
            compile_model="compile" in mods,
            cuda_graphs="graphs" in mods,
        )
    if case.name == "onnxruntime":
        from service.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(checkpoint, cache, case.device)
    if case.name == "tensorrt":
        from service.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(checkpoint, cache, case.precision, max_batch=case.batch)
    raise ValueError(f"unknown backend {case.backend!r}; choose from {BACKENDS}")


def _device_bytes() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return max(int(torch.cuda.max_memory_allocated()), total - free)


def measure(case: dict, checkpoint: str, scene: str, cache: str, output: str) -> dict:
    """Measure one case (given as ``asdict(Case)``); runs in a fresh process."""
    return _measure(Case(**case), Path(checkpoint), Path(scene), Path(cache), Path(output))


def _measure(case: Case, checkpoint: Path, scene: Path, cache: Path, output: Path) -> dict:
    from service.engines.pipeline import reconstruct
    from service.engines.runtime import keep_freed_memory, peak_rss_bytes
    from service.engines.tiling import TilePlan
    from service.exposures import ExposureSet

    tuned = "tuned-malloc" in case.modifiers or (
        case.name != "official-style" and "default-malloc" not in case.modifiers
    )
    if tuned:
        keep_freed_memory()
    data = np.load(scene)
    exposures = ExposureSet(
        tuple(data[f"frame{i}"] for i in range(3)),
        tuple(float(v) for v in data["evs"]),
        ("short", "reference", "long"),
    )
    engine = _engine(case, checkpoint, cache)
    plan = TilePlan.build(case.height, case.width, case.tile, case.overlap)
    try:
        import torch

        cuda = torch.cuda.is_available() and "cuda" in str(engine.device)
    except ImportError:
        cuda = False
    for _ in range(case.warmup):
        out = reconstruct(engine, exposures, plan, case.batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    device_peak = None
    for _ in range(case.runs):
        start = time.perf_counter()
        out = reconstruct(engine, exposures, plan, case.batch)
        times.append(time.perf_counter() - start)
        if cuda:
            sample = _device_bytes()
            device_peak = max(device_peak or 0, sample or 0)
    np.save(output, out)
    return {
        "latency_s": times,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_device_bytes": device_peak,
        "device": str(engine.device),
        "output": str(output),
    }


# --- the parent: cases, reference, table ------------------------------------------------------


def _scene_file(height: int, width: int, seed: int, folder: Path) -> Path:
    from service.quality.synth import make_scene

    scene = make_scene(seed, height, width)
    path = folder / f"scene_{width}x{height}_{seed}.npz"
    np.savez(
        path,
        frame0=scene.frames[0],
        frame1=scene.frames[1],
        frame2=scene.frames[2],
        evs=np.array(scene.evs),
    )
    return path


def _spawn(
    case: Case, checkpoint: Path, scene: Path, cache: Path, output: Path, timeout: float
) -> Result:
    kwargs = {
        "case": asdict(case),
        "checkpoint": str(checkpoint),
        "scene": str(scene),
        "cache": str(cache),
        "output": str(output),
    }
    try:
        values = run_in_child("benchmarks.engines:measure", kwargs, timeout)
    except ChildFailed as exc:
        return Result(case, False, str(exc))
    return Result(case, True, **values)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="AFUNet weights")
    parser.add_argument(
        "--sizes",
        type=frame_sizes,
        default="512x512",
        help="comma-separated WxH frame sizes (default 512x512)",
    )
    parser.add_argument(
        "--backends",
        default="official-style,torch,onnxruntime",
        help=f"comma-separated variants of {BACKENDS}, modifiers {MODIFIERS}",
    )
    parser.add_argument("--precisions", default="fp32", help="comma-separated fp32,fp16,bf16")
    parser.add_argument(
        "--tile-size",
        type=int,
        default=0,
        help="tile edge for our backends; 0 = whole frame (default)",
    )
    parser.add_argument("--tile-overlap", type=int, default=32)
    parser.add_argument("--tile-batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=7, help="synthetic scene seed")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--output-dir", type=Path, help="keep scenes and outputs here (default: a temporary folder)"
    )
    return parser


def _cases(args: argparse.Namespace, height: int, width: int) -> list[Case]:
    cases = []
    for backend in args.backends.split(","):
        name = backend.split(":")[0]
        for precision in args.precisions.split(","):
            if name == "official-style" and precision != "fp32":
                continue
            if name == "onnxruntime" and precision != "fp32":
                continue
            tile = None if name == "official-style" or args.tile_size == 0 else args.tile_size
            cases.append(
                Case(
                    backend,
                    precision,
                    height,
                    width,
                    tile,
                    args.tile_overlap,
                    args.tile_batch,
                    args.runs,
                    args.warmup,
                    args.device,
                )
            )
    return cases


def run(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="hdr-bench-") as tmp:
        folder = args.output_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cache = folder / "engines"
        results: list[Result] = []
        for width, height in args.sizes:
            size = f"{width}x{height}"
            scene = _scene_file(height, width, args.seed, folder)
            reference_case = Case("torch", "fp32", height, width, None, 0, 1, 1, 0, args.device)
            reference = _spawn(
                reference_case,
                args.checkpoint,
                scene,
                cache,
                folder / f"reference_{size}.npy",
                args.timeout,
            )
            ref_out = np.load(reference.output) if reference.ok else None
            for i, case in enumerate(_cases(args, height, width)):
                if case.name == "onnxruntime":
                    # Export in the parent: the child measures inference, not the export.
                    from service.engines.onnxruntime_engine import ensure_onnx

                    plan = TilePlan.build(height, width, case.tile, case.overlap)
                    ensure_onnx(cache, args.checkpoint, plan.tile_h, plan.tile_w)
                result = _spawn(
                    case,
                    args.checkpoint,
                    scene,
                    cache,
                    folder / f"out_{size}_{i}.npy",
                    args.timeout,
                )
                if result.ok and ref_out is not None:
                    out = np.load(result.output)
                    result.psnr_mu_db = psnr_mu(out, ref_out)
                    result.max_abs = float(np.abs(out - ref_out).max())
                results.append(result)
                print(_row(result, results), flush=True)
        return results


def _baseline(result: Result, results: list[Result]) -> Result | None:
    for r in results:
        if (
            r.ok
            and r.case.name == "official-style"
            and "tuned-malloc" not in r.case.modifiers
            and (r.case.height, r.case.width) == (result.case.height, result.case.width)
        ):
            return r
    return None


HEADER = (
    f"{'case':<52} {'MP/s':>8} {'s/frame':>8} {'x base':>7} {'RSS MB':>8} "
    f"{'GPU MB':>8} {'PSNR-mu':>8} {'max|d|':>9}"
)


def _row(result: Result, results: list[Result]) -> str:
    if not result.ok:
        return f"{result.case.label:<52} skipped: {result.reason}"
    base = _baseline(result, results)
    speedup = f"{result.megapixels_per_s / base.megapixels_per_s:7.2f}" if base else f"{'':>7}"
    gpu = f"{result.peak_device_bytes / 2**20:8.0f}" if result.peak_device_bytes else f"{'-':>8}"
    psnr = "inf" if result.psnr_mu_db == math.inf else f"{result.psnr_mu_db or 0:.1f}"
    return (
        f"{result.case.label:<52} {result.megapixels_per_s:8.4f} {result.median_s:8.2f} "
        f"{speedup} {result.peak_rss_bytes / 2**20:8.0f} {gpu} {psnr:>8} "
        f"{result.max_abs if result.max_abs is not None else float('nan'):9.2e}"
    )


def report(results: list[Result], json_path: Path | None) -> None:
    print()
    print(HEADER)
    for result in results:
        print(_row(result, results))
    if json_path is not None:
        rows = []
        for r in results:
            row = asdict(r)
            row["median_s"] = r.median_s if r.ok else None
            row["megapixels_per_s"] = r.megapixels_per_s if r.ok else None
            base = _baseline(r, results)
            row["speedup_vs_official_style"] = (
                r.megapixels_per_s / base.megapixels_per_s if (r.ok and base) else None
            )
            rows.append(row)
        json_path.write_text(
            json.dumps({"results": rows, "host": os.uname().nodename}, indent=2, default=str)
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(HEADER, flush=True)
    report(run(args), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
