"""``hdr-service synth``: write a synthetic labelled test set in Kalantari's layout.

Each scene is three 16-bit TIFFs (short to long), ``exposure.txt`` (EV stops relative to
the shortest exposure) and ``HDRImg.hdr`` (the true radiance in the reference's geometry),
made by ``service.quality.synth``: known answers for tests, benchmarks and load tests at
any size, with moving content so that ghosting matters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.commands.argtypes import frame_size
from service.config import Settings

HELP = "write synthetic bracketed scenes with HDR labels (Kalantari layout)"


def _size(text: str) -> tuple[int, int]:
    """``WxH`` as (width, height), at least 16 pixels each way."""
    width, height = frame_size(text)
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"scenes need at least 16x16 pixels, got {text!r}")
    return width, height


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder to write the scene folders into")
    parser.add_argument("--scenes", type=_positive, required=True, help="how many scenes")
    parser.add_argument(
        "--size", type=_size, default=(768, 512), metavar="WxH", help="frame size (768x512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--ev-step",
        type=float,
        help="stops between exposures (default: 1, 2 or 3, drawn per scene)",
    )
    parser.add_argument(
        "--static", action="store_true", help="nothing moves (no ghosting to handle)"
    )
    parser.add_argument(
        "--camera-shake",
        type=float,
        default=0.0,
        metavar="PX",
        help="move the whole short and long frames by up to PX pixels (default 0: tripod)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write into OUT_DIR even if it is not empty"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.errors import InvalidExposureSet
    from service.quality.synth import generate_dataset

    del settings  # synthetic scenes need no configuration
    out: Path = args.out_dir
    if out.exists() and not out.is_dir():
        raise InvalidExposureSet(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise InvalidExposureSet(f"{out} is not empty; use --force to write into it anyway")
    width, height = args.size
    with tqdm(total=args.scenes, unit="scene", disable=not sys.stderr.isatty()) as bar:
        try:
            generate_dataset(
                out,
                args.scenes,
                height,
                width,
                args.seed,
                motion=not args.static,
                camera_shake=args.camera_shake,
                ev_step=args.ev_step,
                on_scene=lambda _i, _path: bar.update(1),
            )
        except ValueError as exc:  # out-of-range --ev-step or --camera-shake
            raise InvalidExposureSet(str(exc)) from exc
    print(f"wrote {args.scenes} scene(s) of {width}x{height} to {out} (seed {args.seed})")
    return 0
