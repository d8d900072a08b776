"""``hdr-service export``: build ONNX files or TensorRT plans ahead of serving.

Workers build what they lack on first use; exporting ahead moves that cost out of the
first job (and out of a pod's start-up probe window). Files land in the engine cache
that the workers read (the model's version folder, or HDR_ENGINE_CACHE).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.config import Settings
from service.errors import EngineUnavailable

HELP = "export the model to ONNX or build a TensorRT plan for a tile shape"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("onnx", "tensorrt"), required=True)
    parser.add_argument("--model", help="model of the repository (default afunet)")
    parser.add_argument("--checkpoint", type=Path, help="weights instead of the repository's")
    parser.add_argument("--tile-size", type=int, help="square tile edge (default: the model's)")
    parser.add_argument(
        "--tile",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="a non-square tile shape, e.g. a whole frame for --no-tile",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        help="compute precision: of the TensorRT plan (default: the served precision, auto"
        " meaning bf16) or of the ONNX graph"
        " (default fp32; fp16/bf16 graphs are what reduced-precision plans are built from)",
    )
    parser.add_argument("--batch", type=int, help="largest tile batch of the plan")
    parser.add_argument("--output", type=Path, help="ONNX: write here instead of the cache")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.engines.cache import engine_dir
    from service.engines.registry import resolve_serving
    from service.model_repo import checkpoint_spec, model_spec

    name = args.model or settings.default_model
    spec = (
        checkpoint_spec(args.checkpoint, settings.model_repo, name)
        if args.checkpoint
        else model_spec(settings.model_repo, name)
    )
    if spec.weights is None:
        raise EngineUnavailable(f"model {name!r} has no weights to export")
    # What a worker with these settings would serve (variable, config.yaml, default),
    # so that the exported plan is the one it looks up; flags override.
    serving = resolve_serving(spec, settings)
    size = args.tile_size or serving.tile_size
    tile_h, tile_w = args.tile if args.tile else (size, size)
    cache = engine_dir(spec, settings)
    if args.format == "onnx":
        precision = args.precision or "fp32"
    else:  # as the tensorrt backend resolves it: auto is bf16
        precision = args.precision or ("bf16" if serving.precision == "auto" else serving.precision)
    if args.format == "onnx":
        if args.output:
            from service.engines.onnx_export import export_onnx
            from service.model.checkpoint import load_afunet

            path = export_onnx(load_afunet(spec.weights), args.output, tile_h, tile_w, precision)
        else:
            from service.engines.onnxruntime_engine import ensure_onnx

            path = ensure_onnx(cache, spec.weights, tile_h, tile_w, precision)
    else:
        from service.engines.tensorrt_engine import TensorRTEngine

        batch = args.batch or serving.tile_batch
        engine = TensorRTEngine(spec.weights, cache, precision, max_batch=batch)
        path = engine.prepare(tile_h, tile_w)
    print(f"{args.format}: {path}")
    return 0
