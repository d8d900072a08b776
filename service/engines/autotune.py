"""Choosing the tile plan by measurement: tile size and batch per backend and device.

Tiles are an approximation of full-frame inference that gets better as tiles grow (see
README, tiled vs full frame), so the configured tile size is a quality floor: the tuner
only considers that size and larger ones, with batches of 1 to 8, and keeps the
candidate with the highest throughput whose memory fits the budget. On a GPU the memory
of each candidate is measured (peak allocated by PyTorch); on a CPU it is estimated from
the activation footprint per pixel and checked against the machine's free memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.engines.base import Engine, TileBatch

log = logging.getLogger(__name__)

#: Bytes of activations per tile pixel of a float32 forward (measured: peak RSS growth of
#: a 512x512 CPU forward over the model alone, about 8.4 KB, with glibc tuned).
CPU_BYTES_PER_PIXEL = 8_000
BATCHES = (1, 2, 4, 8)
LARGER_TILES = (384, 512, 768, 1024)


@dataclass(frozen=True)
class TileChoice:
    tile: int
    batch: int
    megapixels_per_s: float
    memory_bytes: int


def candidate_plans(
    floor: int, largest: int | None = None, tune_tile: bool = True, batch: int | None = None
) -> list[tuple[int, int]]:
    """(tile, batch) pairs: the configured tile and larger standard ones, all batches.

    ``tune_tile=False`` keeps the tile at ``floor``; ``batch`` fixes the batch (a setting
    pinned by its variable is used as given, only the rest is measured).
    """
    tiles = sorted({floor, *(t for t in LARGER_TILES if t > floor)}) if tune_tile else [floor]
    if largest is not None:
        tiles = [t for t in tiles if t <= max(largest, floor)]
    return [(t, b) for t in tiles for b in (BATCHES if batch is None else (batch,))]


def _free_host_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30


def _measure(engine: Engine, tile: int, batch: int, repeats: int) -> tuple[float, int]:
    """(seconds per tile, peak memory bytes) of ``repeats`` runs after one warm-up."""
    cuda = "cuda" in str(engine.device)
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tiles = TileBatch.blank(batch, tile, tile)
    engine.run(tiles)
    start = time.perf_counter()
    for _ in range(repeats):
        engine.run(tiles)
    seconds = (time.perf_counter() - start) / (repeats * batch)
    if cuda:
        memory = int(torch.cuda.max_memory_allocated() - base)
    else:
        memory = CPU_BYTES_PER_PIXEL * tile * tile * batch
    return seconds, memory


def autotune(
    engine: Engine,
    candidates: Sequence[tuple[int, int]],
    memory_budget: int | None = None,
    repeats: int = 2,
) -> TileChoice:
    """The fastest candidate within ``memory_budget`` (default: 80 % of free memory)."""
    if not candidates:
        raise ValueError("no tile plan candidates to try")
    cuda = "cuda" in str(engine.device)
    if memory_budget is None:
        if cuda:
            import torch

            free, _total = torch.cuda.mem_get_info()
            memory_budget = int(free * 0.8)
        else:
            memory_budget = int(_free_host_bytes() * 0.8)
    best: TileChoice | None = None
    for tile, batch in candidates:
        if not cuda and CPU_BYTES_PER_PIXEL * tile * tile * batch > memory_budget:
            continue  # estimated not to fit: do not even try on the host
        try:
            seconds, memory = _measure(engine, tile, batch, repeats)
        except RuntimeError as exc:  # CUDA out of memory and friends
            log.info("tile %d x batch %d does not run here: %s", tile, batch, exc)
            if cuda:
                import torch

                torch.cuda.empty_cache()
            continue
        if memory > memory_budget:
            continue
        choice = TileChoice(tile, batch, tile * tile / 1e6 / seconds, memory)
        log.info(
            "tile %d x batch %d: %.3f MP/s, %d MB",
            tile,
            batch,
            choice.megapixels_per_s,
            memory >> 20,
        )
        if best is None or choice.megapixels_per_s > best.megapixels_per_s * 1.02:
            best = choice
    if best is None:
        tile, batch = min(candidates)
        log.warning(
            "no tile plan fits %d MB; using the smallest, %d x %d", memory_budget >> 20, tile, batch
        )
        return TileChoice(tile, batch, 0.0, 0)
    return best
