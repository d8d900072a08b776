"""Reduced-precision parity: is an fp16/bf16 engine close enough to fp32 to serve?

Measured as PSNR-mu of the reduced-precision output against the fp32 output on the same
input (the field's own metric, on the tone-mapped images users look at). fp16 may serve
only where this reaches ``FP16_MIN_PSNR_MU_DB``: AFUNet's Swin activations can leave the
fp16 range on some scenes, while bf16 has fp32's range.

The metric and the probe scenes come from ``service.quality``, which knows nothing of
engines: the arrow points from ``engines`` to ``quality`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from service.engines.base import Engine, TileBatch
from service.quality.metrics import psnr_mu
from service.quality.synth import make_scene

log = logging.getLogger(__name__)

FP16_MIN_PSNR_MU_DB = 50.0


def parity_db(engine: Engine, reference: Engine, inputs: Sequence[TileBatch]) -> float:
    """The worst PSNR-mu of ``engine`` against ``reference`` over ``inputs`` batches."""
    return min(psnr_mu(engine.run(x), reference.run(x)) for x in inputs)


def probe_inputs(
    height: int = 256, width: int = 256, seeds: Sequence[int] = (1, 2)
) -> list[TileBatch]:
    """Tile batches of synthetic scenes (bright lights, deep shadows, motion) for checks."""
    batches = []
    for seed in seeds:
        scene = make_scene(seed, height, width)
        batches.append(TileBatch(np.stack(scene.frames)[None], scene.evs))
    return batches
