"""The field's four image-quality scores, computed the way the published tables compute them.

HDR deghosting papers (Kalantari 2017 onwards, AFUNet included) report, per test scene and
averaged over scenes:

- **PSNR-l**: PSNR of the linear prediction against the linear label, data range 1.0;
- **PSNR-mu**: the same on mu-law tone-mapped images, ``log(1 + 5000 x) / log(1 + 5000)``;
- **SSIM-l** / **SSIM-mu**: SSIM of those two pairs after clipping to [0, 1] and scaling by
  255, with an 11 x 11 Gaussian window (sigma 1.5), ``C1 = (0.01 * 255)**2``,
  ``C2 = (0.03 * 255)**2``, the SSIM map kept only where the window fits inside the
  image (5 pixels cropped on every side), averaged over pixels and colour channels.

PSNR is *not* clipped, as in the official evaluation (the networks' sigmoid outputs and the
labels already lie in [0, 1]); the only deviation is that negative values are clamped to 0
before the mu-law, whose logarithm is undefined below ``-1/5000``. Everything is computed
in float64, so the scores agree with scikit-image's ``peak_signal_noise_ratio`` and
``structural_similarity`` (``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255``) to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np

from service.imaging.tonemap import mu_law

#: SSIM window: 11 taps, sigma 1.5 (the window of Wang et al. 2004 and of the field).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_RANGE = 255.0
_C1 = (0.01 * _SSIM_RANGE) ** 2
_C2 = (0.03 * _SSIM_RANGE) ** 2


def _gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


_TAPS = _gaussian_taps()


def _as_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if x.size == 0:
        raise ValueError("images are empty")
    return x, y


def _tonemapped(hdr: np.ndarray) -> np.ndarray:
    """The mu-law image the ``-mu`` scores compare, in float64; negatives count as 0."""
    return mu_law(np.maximum(hdr, 0.0), dtype=np.float64)


def psnr(prediction: np.ndarray, label: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    x, y = _as_pair(prediction, label)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def psnr_mu(prediction: np.ndarray, label: np.ndarray) -> float:
    """PSNR-mu: :func:`psnr` of the mu-law tone-mapped images; ``inf`` for identical ones.

    The score of the field's tables, also used to compare two engines' outputs (reduced
    precision against fp32, tiled against full frame).
    """
    x, y = _as_pair(prediction, label)
    return psnr(_tonemapped(x), _tonemapped(y))


def _valid_filter(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian correlation over the first two axes, valid region only.

    Only outputs whose 11 x 11 window lies inside the image are computed: exactly the
    pixels the official ``filter2D(...)[5:-5, 5:-5]`` keeps, so no border rule matters.
    """
    n = len(_TAPS)
    rows = image.shape[0] - n + 1
    acc = _TAPS[0] * image[:rows]
    for k in range(1, n):
        acc += _TAPS[k] * image[k : k + rows]
    cols = acc.shape[1] - n + 1
    out = _TAPS[0] * acc[:, :cols]
    for k in range(1, n):
        out += _TAPS[k] * acc[:, k : k + cols]
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ``H x W`` or ``H x W x C`` images in the 0..255 scale, mean over channels.

    Callers clip and scale first (see :func:`score`); this function only measures.
    """
    x, y = _as_pair(a, b)
    if x.ndim not in (2, 3) or min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs an image of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {x.shape}"
        )
    mu_x, mu_y = _valid_filter(x), _valid_filter(y)
    xx = _valid_filter(x * x) - mu_x**2
    yy = _valid_filter(y * y) - mu_y**2
    xy = _valid_filter(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * xy + _C2)) / (
        (mu_x**2 + mu_y**2 + _C1) * (xx + yy + _C2)
    )
    # Every channel has as many pixels, so the mean of the map is the mean of the
    # per-channel SSIMs (what the official code's per-channel loop averages).
    return float(ssim_map.mean())


def _to_255(x: np.ndarray) -> np.ndarray:
    return np.clip(x * _SSIM_RANGE, 0.0, _SSIM_RANGE)


@dataclass(frozen=True)
class Scores:
    """The four scores of one prediction (or their means over a set)."""

    psnr_mu: float
    psnr_l: float
    ssim_mu: float
    ssim_l: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


SCORE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Scores))


def score(prediction: np.ndarray, label: np.ndarray) -> Scores:
    """PSNR-mu, PSNR-l, SSIM-mu and SSIM-l of an ``H x W x 3`` linear prediction."""
    pred, truth = _as_pair(prediction, label)
    pred_mu, truth_mu = _tonemapped(pred), _tonemapped(truth)
    return Scores(
        psnr_mu=psnr(pred_mu, truth_mu),
        psnr_l=psnr(pred, truth),
        ssim_mu=ssim(_to_255(pred_mu), _to_255(truth_mu)),
        ssim_l=ssim(_to_255(pred), _to_255(truth)),
    )


def mean_scores(scores: Iterable[Scores]) -> Scores:
    """The per-score arithmetic mean over scenes, as the papers average their test sets."""
    items = list(scores)
    if not items:
        raise ValueError("no scores to average")
    return Scores(
        **{
            name: float(np.mean([getattr(s, name) for s in items], dtype=np.float64))
            for name in SCORE_NAMES
        }
    )
