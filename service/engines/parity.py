"""Reduced-precision parity: is an fp16/bf16 engine close enough to fp32 to serve?

Measured as PSNR-mu of the reduced-precision output against the fp32 output on the same
input (the field's own metric, on the tone-mapped images users look at). fp16 may serve
only where this reaches ``FP16_MIN_PSNR_MU_DB``: AFUNet's Swin activations can leave the
fp16 range on some scenes, while bf16 has fp32's range.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from service.engines.base import Engine
from service.model.preprocess import TileBatch

log = logging.getLogger(__name__)

FP16_MIN_PSNR_MU_DB = 50.0
_MU = 5000.0


def psnr_mu(test: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (data range 1) of the mu-law tone-mapped images; inf when identical."""
    a = np.log1p(_MU * np.clip(test.astype(np.float64), 0, None)) / np.log1p(_MU)
    b = np.log1p(_MU * np.clip(reference.astype(np.float64), 0, None)) / np.log1p(_MU)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def parity_db(engine: Engine, reference: Engine, inputs: Sequence[TileBatch]) -> float:
    """The worst PSNR-mu of ``engine`` against ``reference`` over ``inputs`` batches."""
    return min(psnr_mu(engine.run(x), reference.run(x)) for x in inputs)


def probe_inputs(
    height: int = 256, width: int = 256, seeds: Sequence[int] = (1, 2)
) -> list[TileBatch]:
    """Tile batches of synthetic scenes (bright lights, deep shadows, motion) for checks."""
    from service.quality.synth import make_scene

    batches = []
    for seed in seeds:
        scene = make_scene(seed, height, width)
        batches.append(TileBatch(np.stack(scene.frames)[None], scene.evs))
    return batches
