"""Image quality: the field's metrics, synthetic labelled scenes, and test-set evaluation.

- :mod:`~service.quality.metrics`: PSNR-mu, PSNR-l, SSIM-mu, SSIM-l exactly as the
  published tables compute them (:func:`score`, :func:`mean_scores`).
- :mod:`~service.quality.synth`: bracketed scenes with a known HDR label and moving
  content, in memory (:func:`make_scene`) or on disk in Kalantari's layout
  (:func:`generate_dataset`).
- :mod:`~service.quality.datasets`: the Kalantari, Hu and Tel layouts and scene loading
  whose errors name the scene.
- :mod:`~service.quality.evaluation`: score any predictor on a test set scene by scene
  (:func:`evaluate`), with the official padding protocol available; a served model
  becomes a predictor through ``service.engines.pipeline.ModelPredictor``.

The whole package is light (numpy, no torch) and imports no engine: ``engines`` imports
``quality`` (the fp16 parity check scores with its metric on its synthetic scenes), never
the other way round. Metrics, synthetic scenes and datasets are re-exported here.
"""

from service.quality.datasets import (
    LAYOUTS,
    InvalidDataset,
    LabelledScene,
    Layout,
    find_scenes,
    load_scene,
)
from service.quality.metrics import Scores, mean_scores, psnr, psnr_mu, score, ssim
from service.quality.synth import SyntheticScene, generate_dataset, make_scene, write_scene

__all__ = [
    "LAYOUTS",
    "InvalidDataset",
    "LabelledScene",
    "Layout",
    "Scores",
    "SyntheticScene",
    "find_scenes",
    "generate_dataset",
    "load_scene",
    "make_scene",
    "mean_scores",
    "psnr",
    "psnr_mu",
    "score",
    "ssim",
    "write_scene",
]
