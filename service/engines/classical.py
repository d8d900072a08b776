"""The weight-free model: reference-guided exposure merging with deghosting, in numpy.

It reads the same ``(B, 18, h, w)`` input as AFUNet. Per exposure ``i`` (short to long,
the middle one the reference) the input holds ``ldr_i`` (the stored image in [0, 1]) and
``hdr_i = ldr_i ** 2.2 / t_i``: a linear radiance estimate in one unit shared by all three.
So the merge needs no camera metadata: the exposure times are implicit in the input
(``t_i = ldr_i ** 2.2 / hdr_i`` at every pixel) and are read back per tile.

The merge is a weighted mean of the three radiance estimates,
``hdr = sum(w_i * hdr_i) / sum(w_i)``, with

- ``w_i = (t_i / t_ref) * sat_i * dark_i * agree_i``: longer exposures carry less noise
  per unit of radiance, so, where they are usable, they count more (inverse-variance
  weighting for shot noise);
- ``sat_i`` falls from 1 to 0 as the brightest channel of ``ldr_i`` goes from 0.80 to 0.95:
  a clipped pixel only bounds the radiance from below. The shortest exposure has no such
  term: where it clips, nothing knows more;
- ``dark_i`` rises from 0 to 1 as the mean of ``ldr_i`` goes from 0 to 0.04, where
  quantisation and read noise dominate. The longest exposure has no such term: where it
  is dark, nothing knows more;
- ``agree_i`` (deghosting, non-reference exposures only): exposure ``i`` is re-exposed as
  the reference would have recorded it, ``p_i = clip(hdr_i * t_ref, 0, 1) ** (1/2.2)``,
  and compared with ``ldr_ref``: the mean absolute difference over the three channels,
  averaged over 3 x 3 pixels against noise. Up to 0.008 the two agree (``agree_i = 1``);
  from 0.025 on the pixel is a ghost (``agree_i = 0``) and falls back to the reference.
  Both sides are clipped the way the reference is, so the test also holds where the
  reference is saturated (there it says "at least this bright") or black. The thresholds
  sit a few times above the difference that noise and 16-bit quantisation alone produce
  on well-exposed pixels; on the synthetic benchmark anything from 0.004/0.015 to
  0.01/0.03 scores within 0.4 dB PSNR-mu. Noisier data (8-bit JPEG uploads) makes more
  pixels fall back to the reference: noisier, never ghosted.
- the reference always keeps a tiny weight, so a pixel whose other exposures are all
  rejected or unusable takes the reference's value (its clipped value if saturated)
  rather than a ghost.

Everything is per pixel except the 3 x 3 average, so tiles blend seamlessly with a few
pixels of overlap. Outputs are linear radiance in the input's unit (for Kalantari-style
EVs relative to the shortest exposure, the label's unit) and may exceed 1 when the EVs
make the shorter exposures' hdr channels exceed 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.engines.base import TileBatch

log = logging.getLogger(__name__)

GAMMA = 2.2
EXPOSURES = 3
REFERENCE = 1
CHANNELS = 6 * EXPOSURES
#: EV spacing assumed when a whole tile of an exposure is black (nothing to read t from).
_FALLBACK_STOPS = 2.0


@dataclass(frozen=True)
class MergeParams:
    """Thresholds of the merge, all on the stored (gamma-encoded) [0, 1] scale."""

    saturation_start: float = 0.80
    saturation_end: float = 0.95
    dark_end: float = 0.04
    agree_below: float = 0.008
    ghost_above: float = 0.025
    window_radius: int = 1
    reference_floor: float = 1e-4


def _ramp(x: np.ndarray, start: float, end: float) -> np.ndarray:
    """0 at ``start``, 1 at ``end``, linear between (``end < start`` ramps down)."""
    return np.clip((x - np.float32(start)) * np.float32(1.0 / (end - start)), 0.0, 1.0)


def _box_mean(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a ``(2r+1)^2`` window of each ``(B, h, w)`` slice, edges replicated."""
    if radius <= 0:
        return a
    size = 2 * radius + 1
    padded = np.pad(a, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    integral = np.zeros((a.shape[0], padded.shape[1] + 1, padded.shape[2] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(padded, axis=1, dtype=np.float64), axis=2, out=integral[:, 1:, 1:])
    h, w = a.shape[1], a.shape[2]
    total = (
        integral[:, size : size + h, size : size + w]
        - integral[:, :h, size : size + w]
        - integral[:, size : size + h, :w]
        + integral[:, :h, :w]
    )
    return (total / (size * size)).astype(np.float32)


def exposure_times(hdr: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """``(B, E)`` exposure times in the input's unit, read back from the input itself.

    ``hdr_i = ldr_i ** 2.2 / t_i`` holds at every pixel, so ``t_i`` is the ratio of the
    sums of ``ldr_i ** 2.2`` and ``hdr_i`` over the tile. An exposure that is black over a
    whole tile carries no radiance information, and its time is extrapolated from the
    others (equal EV spacing, else ``_FALLBACK_STOPS`` apart); it then only shapes that
    exposure's weight, never a value.
    """
    num = linear.sum(axis=(2, 3, 4), dtype=np.float64)
    den = hdr.sum(axis=(2, 3, 4), dtype=np.float64)
    valid = (num > 0) & (den > 0)
    stops = np.zeros(num.shape, dtype=np.float64)
    np.log2(num, out=stops, where=valid)
    stops -= np.log2(den, out=np.zeros_like(stops), where=valid)
    index = np.arange(EXPOSURES, dtype=np.float64)
    for b in range(num.shape[0]):
        known = np.flatnonzero(valid[b])
        if len(known) == EXPOSURES:
            continue
        if len(known) >= 2:
            slope = (stops[b, known[-1]] - stops[b, known[0]]) / (known[-1] - known[0])
        else:
            slope = _FALLBACK_STOPS
        log.debug("tile %d: exposures %s are black; their times are extrapolated", b, known)
        at, value = (int(known[0]), stops[b, known[0]]) if len(known) else (REFERENCE, 0.0)
        missing = ~valid[b]
        stops[b, missing] = value + slope * (index[missing] - at)
    return np.exp2(stops)


class ClassicalEngine:
    """Exposure merging with deghosting against the reference; no weights, any size."""

    backend = "numpy"
    device = "cpu"
    precision = "fp32"
    batch_invariant = True
    """Pure numpy, every tile on its own: the same bits in any batch (tested)."""

    def __init__(self, deghost: bool = True, params: MergeParams | None = None) -> None:
        self.deghost = deghost
        self.params = params or MergeParams()

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        """Nothing is compiled or cached; one call checks the shapes work end to end."""
        self.run(TileBatch.blank(batch, tile_h, tile_w))

    def run(self, batch: TileBatch) -> np.ndarray:
        """Merge a batch of tiles (the Engine interface)."""
        return self.merge(batch.model_input())

    def merge(self, tiles: np.ndarray) -> np.ndarray:
        """``(B, 18, h, w)`` float32 inputs to ``(B, 3, h, w)`` float32 linear HDR."""
        if tiles.ndim != 4 or tiles.shape[1] != CHANNELS:
            raise ValueError(f"expected (B, {CHANNELS}, h, w) tiles, got shape {tiles.shape}")
        batch, _, height, width = tiles.shape
        x = np.asarray(tiles, dtype=np.float32).reshape(batch, EXPOSURES, 2, 3, height, width)
        hdr = np.maximum(x[:, :, 0], 0.0)  # (B, E, 3, h, w)
        ldr = np.clip(x[:, :, 1], 0.0, 1.0)
        weights = self._weights(hdr, ldr)  # (B, E, h, w)
        merged = np.einsum("bechw,behw->bchw", hdr, weights)
        merged /= weights.sum(axis=1)[:, None]
        return merged.astype(np.float32, copy=False)

    def _weights(self, hdr: np.ndarray, ldr: np.ndarray) -> np.ndarray:
        p = self.params
        times = exposure_times(hdr, ldr**GAMMA)  # (B, E)
        relative = (times / times[:, REFERENCE : REFERENCE + 1]).astype(np.float32)
        brightest = ldr.max(axis=2)  # (B, E, h, w)
        mean = ldr.mean(axis=2)
        weights = np.empty_like(brightest)
        for i in range(EXPOSURES):
            w = np.broadcast_to(relative[:, i, None, None], brightest[:, i].shape).copy()
            if i > 0:  # the shortest exposure is the last word on highlights
                w *= _ramp(brightest[:, i], p.saturation_end, p.saturation_start)
            if i < EXPOSURES - 1:  # the longest is the last word on shadows
                w *= _ramp(mean[:, i], 0.0, p.dark_end)
            weights[:, i] = w
        if self.deghost:
            t_ref = times[:, REFERENCE].astype(np.float32)
            reference = ldr[:, REFERENCE]
            for i in range(EXPOSURES):
                if i != REFERENCE:
                    weights[:, i] *= self._agreement(hdr[:, i], reference, t_ref)
        weights[:, REFERENCE] += np.float32(p.reference_floor)
        return weights

    def _agreement(self, hdr: np.ndarray, reference: np.ndarray, t_ref: np.ndarray) -> np.ndarray:
        """``(B, h, w)`` in [0, 1]: 1 where ``hdr`` re-exposed as the reference matches it."""
        p = self.params
        reexposed = np.clip(hdr * t_ref[:, None, None, None], 0.0, 1.0) ** np.float32(1 / GAMMA)
        difference = np.abs(reexposed - reference).mean(axis=1)
        return _ramp(_box_mean(difference, p.window_radius), p.ghost_above, p.agree_below)
