"""Quality of the weight-free merges on a synthetic motion set, in one run.

Generates ``--scenes`` synthetic scenes in memory (``service.quality.synth``: moving and
deforming objects, saturating lights and sky, deep shadows; EV steps of 1 to 3 stops) and
scores, with the field's metrics (``service.quality.metrics``), on the same scenes:

- ``classical``: the service's weight-free model (``service/engines/classical.py``),
  run through the service's own tiling and blending;
- ``classical, no deghosting``: the same merge with the reference check switched off,
  to show what deghosting is worth;
- ``OpenCV MergeDebevec``: ``cv2.createMergeDebevec().process`` given the same exposure
  times (``2**ev``) and a gamma-2.2 camera response. It needs 8-bit frames, so the 16-bit
  frames are rounded to 8 bits first; it merges log radiance with triangle weights and
  knows nothing of motion;
- ``reference frame alone``: the middle exposure linearised, ``ldr**2.2 / 2**ev``;
- ``afunet`` (with ``--checkpoint``): AFUNet through the service's tiled pipeline.

Prints a Markdown table (what README.md shows) and, with ``--min-gain DB``, exits 1 when
classical does not beat both MergeDebevec and the reference frame by that much PSNR-mu.

    python -m benchmarks.quality --scenes 24 --size 768x512 --seed 0 --min-gain 5

Needs OpenCV (``pip install -e .[dev]`` brings opencv-python-headless).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from service.commands.argtypes import frame_size
from service.config import Settings
from service.engines.classical import ClassicalEngine
from service.engines.pipeline import ModelPredictor, reconstruct
from service.engines.registry import load_model
from service.engines.tiling import TilePlan
from service.exposures import ExposureSet
from service.imaging import to_unit_float
from service.quality.datasets import LabelledScene
from service.quality.evaluation import EvaluationReport, Predictor, evaluate
from service.quality.synth import make_scene, scene_name, scene_seed

log = logging.getLogger("benchmarks.quality")

GAMMA = 2.2
#: The classical model's tile geometry (model_repo/classical/config.yaml).
CLASSICAL_TILE, CLASSICAL_OVERLAP, CLASSICAL_BATCH = 512, 16, 2


def reference_only(exposures: ExposureSet) -> np.ndarray:
    """The middle exposure alone, linearised into the label's unit."""
    ldr = to_unit_float(exposures.frames[1])
    return (ldr.astype(np.float64) ** GAMMA / 2.0 ** exposures.evs[1]).astype(np.float32)


def merge_debevec(exposures: ExposureSet) -> np.ndarray:
    """OpenCV's MergeDebevec with a gamma-2.2 response and the true exposure times."""
    import cv2

    frames = [
        np.rint(f.astype(np.float64) / 257.0).astype(np.uint8)
        if f.dtype == np.uint16
        else f.astype(np.uint8)
        for f in exposures.frames
    ]
    times = np.array([2.0**ev for ev in exposures.evs], dtype=np.float32)
    response = (np.arange(256, dtype=np.float64) / 255.0) ** GAMMA
    response[0] = response[1]  # log(0) would poison every pixel with a black exposure
    curve = np.repeat(response.astype(np.float32)[:, None, None], 3, axis=2)
    return cv2.createMergeDebevec().process(frames, times, curve)


def classical(deghost: bool) -> Predictor:
    """The classical engine through the service's tiling and blending."""
    engine = ClassicalEngine(deghost=deghost)

    def predict(exposures: ExposureSet) -> np.ndarray:
        plan = TilePlan.build(exposures.height, exposures.width, CLASSICAL_TILE, CLASSICAL_OVERLAP)
        return reconstruct(engine, exposures, plan, CLASSICAL_BATCH)

    return predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=24, help="scenes (default 24)")
    parser.add_argument("--size", type=frame_size, default=(768, 512), help="WxH (768x512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set (0)")
    parser.add_argument(
        "--camera-shake", type=float, default=0.0, help="camera translation, pixels (0)"
    )
    parser.add_argument("--checkpoint", type=Path, help="also score AFUNet with these weights")
    parser.add_argument("--json", type=Path, help="write every method's report as JSON")
    parser.add_argument(
        "--min-gain",
        type=float,
        help="exit 1 unless classical beats MergeDebevec and the reference by this (dB)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    width, height = args.size
    started = time.perf_counter()
    scenes = []
    for index in range(args.scenes):
        synthetic = make_scene(
            scene_seed(args.seed, index), height, width, camera_shake=args.camera_shake
        )
        scenes.append(LabelledScene(scene_name(index), synthetic.exposure_set(), synthetic.label))
    generated = time.perf_counter() - started

    methods: dict[str, Predictor] = {
        "classical": classical(deghost=True),
        "classical, no deghosting": classical(deghost=False),
        "OpenCV MergeDebevec": merge_debevec,
        "reference frame alone": reference_only,
    }
    if args.checkpoint:
        served = load_model(Settings(), "afunet", args.checkpoint)
        methods["afunet"] = ModelPredictor(served)

    reports: dict[str, EvaluationReport] = {}
    for name, predict in methods.items():
        reports[name] = evaluate(predict, scenes)

    print(
        f"{args.scenes} synthetic scenes with motion, {width}x{height}, seed {args.seed},"
        f" camera shake {args.camera_shake:g} px (generated in {generated:.1f} s)\n"
    )
    print("| method | PSNR-mu | PSNR-l | SSIM-mu | SSIM-l | s/scene |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, report in reports.items():
        mean = report.mean
        assert mean is not None  # in-memory scenes cannot fail to load
        seconds = sum(s.seconds for s in report.scenes) / len(report.scenes)
        print(
            f"| {name} | {mean.psnr_mu:.2f} | {mean.psnr_l:.2f} | {mean.ssim_mu:.4f}"
            f" | {mean.ssim_l:.4f} | {seconds:.2f} |"
        )

    def psnr_mu(name: str) -> float:
        mean = reports[name].mean
        assert mean is not None
        return mean.psnr_mu

    gain = psnr_mu("classical") - max(
        psnr_mu("OpenCV MergeDebevec"), psnr_mu("reference frame alone")
    )
    print(f"\nclassical gains {gain:.2f} dB PSNR-mu over the better of the two baselines")
    if args.json:
        args.json.write_text(
            json.dumps({name: r.as_dict() for name, r in reports.items()}, indent=2) + "\n"
        )
    if args.min_gain is not None and gain < args.min_gain:
        print(f"FAIL: less than the required {args.min_gain:g} dB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
