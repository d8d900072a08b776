"""``hdr-service infer``: reconstruct one exposure set offline, without Redis or HTTP."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from service.commands.model_options import add_model_arguments, add_tiling_arguments, open_model
from service.config import Settings
from service.errors import InvalidExposureSet

HELP = "reconstruct one exposure set offline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scene",
        nargs="?",
        type=Path,
        help="Kalantari-style scene folder: three TIFFs (sorted by name) and exposure.txt",
    )
    parser.add_argument(
        "--exposures",
        nargs=3,
        type=Path,
        metavar=("SHORT", "MID", "LONG"),
        help="three image files instead of a scene folder, short to long exposure",
    )
    parser.add_argument(
        "--ev",
        help="EV stops of --exposures, plain decimals, e.g. --ev=-2,0,2 (with '=' when the"
        " first is negative); shifted so that the shortest is 0 as in the training data"
        " (-2,0,2 and 0,2,4 give the same result)",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="result file: .exr (OpenEXR), .hdr (Radiance) or .png (tone-mapped preview)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float32",
        help="OpenEXR sample type (default float32)",
    )
    add_tiling_arguments(parser)
    add_model_arguments(parser)


def _load_exposures(args: argparse.Namespace):
    """A scene's ``exposure.txt`` is used verbatim, as the official test code uses it;
    ``--ev`` is shifted to the shortest exposure like every EV the API receives."""
    from service.exposures import (
        load_exposure_files,
        load_scene_dir,
        parse_exposure_values,
        relative_to_shortest,
    )

    if args.exposures:
        if args.scene is not None:
            raise InvalidExposureSet("give either a scene folder or --exposures, not both")
        if args.ev is None:
            raise InvalidExposureSet(
                "--exposures needs --ev with one EV per file, e.g. --ev=-2,0,2"
            )
        evs = parse_exposure_values(args.ev, "--ev")
        return load_exposure_files(args.exposures, relative_to_shortest(evs))
    if args.scene is None:
        raise InvalidExposureSet("give a scene folder or --exposures SHORT MID LONG --ev ...")
    if args.ev is not None:
        raise InvalidExposureSet("--ev goes with --exposures; a scene folder has exposure.txt")
    return load_scene_dir(args.scene)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.engines.pipeline import reconstruct
    from service.engines.tiling import TilePlan
    from service.imaging import ResultFormat, write_result

    suffix = args.output.suffix.lower().lstrip(".")
    if suffix not in {f.value for f in ResultFormat}:
        raise InvalidExposureSet(
            f"cannot tell the result format from {args.output.name!r}: use .exr, .hdr or .png"
        )
    exposures = _load_exposures(args)
    served = open_model(args, settings)
    tile = None if args.no_tile else (args.tile_size or served.tile_size)
    overlap = served.tile_overlap if args.tile_overlap is None else args.tile_overlap
    plan = TilePlan.build(exposures.height, exposures.width, tile, overlap)
    engine = served.engine
    started = time.perf_counter()
    with tqdm(total=len(plan), unit="tile", disable=not sys.stderr.isatty()) as bar:
        hdr = reconstruct(
            engine,
            exposures,
            plan,
            args.tile_batch or served.tile_batch,
            on_progress=lambda done, _total: bar.update(done - bar.n),
        )
    elapsed = time.perf_counter() - started
    write_result(args.output, hdr, args.dtype)
    megapixels = exposures.width * exposures.height / 1e6
    print(
        f"wrote {args.output} ({exposures.width}x{exposures.height}, {len(plan)} tile(s),"
        f" {elapsed:.2f} s, {megapixels / elapsed:.3f} MP/s, {engine.backend}"
        f" {engine.precision} on {engine.device})"
    )
    return 0
