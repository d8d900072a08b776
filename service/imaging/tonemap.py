"""Mu-law tone mapping: the field's standard way to look at (and score) linear HDR images.

PSNR-mu and SSIM-mu, the metrics HDR deghosting papers report, are computed on
``mu_law`` of images clipped to [0, 1] with mu = 5000; the preview PNG uses the same
curve, so what a user sees is what the metrics measure.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MU = 5000.0


def mu_law(hdr: np.ndarray, mu: float = MU) -> np.ndarray:
    """``log(1 + mu * x) / log(1 + mu)``, as float32 (the input is not clipped here)."""
    x = np.asarray(hdr, dtype=np.float32)
    return (np.log1p(np.float32(mu) * x) / np.float32(np.log1p(mu))).astype(np.float32)


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
