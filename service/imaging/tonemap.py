"""Mu-law tone mapping: the field's standard way to look at (and score) linear HDR images.

PSNR-mu and SSIM-mu, the metrics HDR deghosting papers report, are computed on
``mu_law`` of images with mu = 5000; the preview PNG uses the same curve, so what a user
sees is what the metrics measure. This is the one implementation of the curve: the
metrics (``service.quality.metrics``, in float64) and the preview (float32) both call it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MU = 5000.0


def mu_law(hdr: np.ndarray, mu: float = MU, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """``log(1 + mu * x) / log(1 + mu)``, computed and returned in ``dtype``.

    float32 is enough for a picture; the metrics ask for float64 so that their scores
    agree with scikit-image to rounding. The input is not clipped here: callers decide
    what negatives and values above 1 mean.
    """
    x = np.asarray(hdr, dtype=dtype)
    return np.asarray(np.log1p(dtype(mu) * x) / dtype(np.log1p(mu)), dtype=dtype)


def preview_png(hdr: np.ndarray, mu: float = MU) -> bytes:
    """An 8-bit RGB PNG of the mu-law tone-mapped image, clipped to [0, 1] first.

    Values above 1 (possible only from the classical fallback model) saturate to white;
    NaNs show as black.
    """
    if hdr.ndim != 3 or hdr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {hdr.shape}")
    clipped = np.clip(np.nan_to_num(np.asarray(hdr, dtype=np.float32), nan=0.0), 0.0, 1.0)
    levels = np.rint(mu_law(clipped, mu) * 255.0).astype(np.uint8)
    stream = io.BytesIO()
    Image.fromarray(levels).save(stream, format="PNG")
    return stream.getvalue()
