"""``hdr-service evaluate``: score a model on a labelled test set, as the papers do.

Prints PSNR-mu, PSNR-l, SSIM-mu and SSIM-l per scene and their means (the field's
protocol, see ``service.quality.metrics``); ``--json`` / ``--csv`` keep them. Scenes that
cannot be read are listed with their problem and the run goes on; the exit status is 1
when any scene failed, 2 when none could be scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.commands.model_options import add_model_arguments, add_tiling_arguments, open_model
from service.config import Settings

HELP = "score a model on a labelled test set (Kalantari, Hu or Tel layout)"

#: What the official AFUNet test does: the whole frame at once, padded to 128 pixels.
OFFICIAL_PAD = 128
#: ``service.quality.datasets.LAYOUTS``' names, spelled out so ``--help`` imports nothing.
LAYOUT_NAMES = ("kalantari", "hu", "tel")
_SAVE_FORMATS = ("exr", "hdr", "png")


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in _SAVE_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(_SAVE_FORMATS)}, got {text!r}"
        )
    return formats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        type=Path,
        help="folder of scene folders (or the dataset root holding the layout's test"
        " folder, e.g. Kal/ for Kal/Test/Test-set, or a single scene folder)",
    )
    layout = parser.add_argument_group("dataset layout (defaults per --layout)")
    layout.add_argument(
        "--layout",
        choices=LAYOUT_NAMES,
        default="kalantari",
        help="file names of the scene folders (default: kalantari)",
    )
    layout.add_argument("--test-path", help="test folder below the dataset root")
    layout.add_argument("--ldr-prefix", help="frames are the TIFFs starting with this")
    layout.add_argument("--ldr-folder", help="sub-folder of each scene holding its frames")
    layout.add_argument("--exposure-file", help="EV stops file in each scene")
    layout.add_argument("--label-file", help="HDR label file in each scene (.hdr or .exr)")

    model = parser.add_argument_group("model")
    add_model_arguments(model)

    tiling = parser.add_argument_group(
        "tiling and padding",
        "The default runs the model as the service does (its own tiles, no padding). To"
        f" reproduce the published figures use --no-tile --pad-to {OFFICIAL_PAD}, as the"
        " official test does.",
    )
    add_tiling_arguments(tiling)
    tiling.add_argument(
        "--pad-to",
        type=int,
        default=0,
        metavar="N",
        help=f"reflect-pad frames to a multiple of N first (official: {OFFICIAL_PAD};"
        " default: no padding); a scene needing as much padding as its side fails, as in"
        " the official test",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the scores as JSON")
    out.add_argument("--csv", type=Path, metavar="FILE", help="write the scores as CSV")
    out.add_argument("--save-dir", type=Path, metavar="DIR", help="save each prediction here")
    out.add_argument(
        "--save-format",
        type=_formats,
        default=("exr", "png"),
        metavar="LIST",
        help="formats of saved predictions: exr (float32), hdr, png (mu-law tone-mapped);"
        " default: exr,png",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.engines.pipeline import ModelPredictor
    from service.quality.datasets import LAYOUTS, InvalidDataset, find_scenes
    from service.quality.evaluation import SaveOptions, evaluate

    if args.pad_to < 0:
        raise InvalidDataset(f"--pad-to must be 0 (off) or positive, got {args.pad_to}")
    layout = LAYOUTS[args.layout].with_overrides(
        test_path=args.test_path,
        ldr_prefix=args.ldr_prefix,
        ldr_folder=args.ldr_folder,
        exposure_file=args.exposure_file,
        label_file=args.label_file,
    )
    scenes = find_scenes(args.dataset, layout)
    served = open_model(args, settings)
    predictor = ModelPredictor(
        served,
        tile_size=0 if args.no_tile else args.tile_size,
        tile_overlap=args.tile_overlap,
        tile_batch=args.tile_batch,
        pad_to=args.pad_to,
    )
    save = SaveOptions(args.save_dir, args.save_format) if args.save_dir else None

    with tqdm(total=len(scenes), unit="scene", disable=not sys.stderr.isatty()) as bar:
        predictor.on_progress = lambda done, total: bar.set_postfix_str(f"tiles {done}/{total}")
        report = evaluate(
            predictor, scenes, layout, save=save, on_scene=lambda _name: bar.update(1)
        )
    report.info.update(
        {
            "dataset": str(args.dataset),
            "layout": layout.name,
            "model": served.describe(),
            **predictor.describe(),
        }
    )
    if args.json:
        report.write_json(args.json)
    if args.csv:
        report.write_csv(args.csv)

    model = served.describe()
    print(
        f"{model['name']} ({model['backend']} {model['precision']} on {model['device']})"
        f" on {args.dataset}, {layout.name} layout"
    )
    print(report.format_table())
    if not report.scenes:
        raise InvalidDataset(f"no scene of {args.dataset} could be evaluated")
    return 1 if report.failures else 0
