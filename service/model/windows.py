"""Geometry of (shifted) window attention, computed once and cached.

The official code rolls the frame, cuts it into windows with view/permute copies, and
rebuilds a dense ``(windows, 64, 64)`` shift mask in every shifted block on every call.
Two facts make most of that unnecessary:

* Roll + window partition is a fixed permutation of the tokens for a given frame size, so
  one ``index_select`` with a cached index does both, and its inverse undoes both.
* Only windows in the last window-row or window-column straddle the cyclic seam; every one
  of them sees one of just three masks (right column, bottom row, corner), independent of
  the frame size. Ordering windows by mask type lets each group run as one fused
  ``scaled_dot_product_attention`` call with a broadcast ``(heads, N, N)`` mask, so no
  dense per-window mask is ever stored.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

#: Additive mask value the official code uses between tokens of different seam regions.
SHIFT_MASK_VALUE = -100.0

#: Window groups, in the order their tokens are laid out: no seam, right column, bottom row,
#: bottom-right corner. Index into ``shift_masks()``.
WINDOW_GROUPS = ("plain", "right", "bottom", "corner")


@dataclass(frozen=True)
class WindowLayout:
    """Token permutation for one (batch, height, width, shift) and its window groups."""

    gather: torch.Tensor
    """Indices into pixel-ordered ``(batch * H * W)`` tokens, giving window order."""
    scatter: torch.Tensor
    """Inverse permutation: window-ordered tokens back to pixel order."""
    group_windows: tuple[int, ...]
    """Number of windows (over the whole batch) in each of ``WINDOW_GROUPS``."""


def _region_labels(size: int, window: int, shift: int) -> torch.Tensor:
    """Seam region (0, 1, 2) of each row/column of the rolled frame, as the official mask."""
    labels = torch.zeros(size, dtype=torch.long)
    if shift:
        labels[size - window : size - shift] = 1
        labels[size - shift :] = 2
    return labels


def shift_masks(window: int, shift: int) -> torch.Tensor:
    """The additive mask of each window group: ``(4, N, N)`` with 0 or ``SHIFT_MASK_VALUE``.

    A window in the right column has columns from two seam regions (labels 1 and 2 of the
    last ``window`` columns), rows all from region 0; the bottom row likewise for rows; the
    corner for both. Tokens attend only within their own region.
    """
    n = window * window
    tail = _region_labels(window, window, shift)  # labels of the last window's rows/cols
    flat = torch.zeros(window, dtype=torch.long)
    masks = torch.zeros(len(WINDOW_GROUPS), n, n)
    for g, (rows, cols) in enumerate(((flat, flat), (flat, tail), (tail, flat), (tail, tail))):
        region = (rows[:, None] * 3 + cols[None, :]).reshape(n)
        masks[g] = (region[:, None] != region[None, :]).float() * SHIFT_MASK_VALUE
    return masks


def relative_position_index(window: int) -> torch.Tensor:
    """``(N, N)`` index into a ``(2w-1)^2`` bias table for each query/key token pair."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _build_layout(batch: int, height: int, width: int, window: int, shift: int) -> WindowLayout:
    tokens = height * width
    pixels = torch.arange(tokens).view(height, width)
    if shift:
        pixels = torch.roll(pixels, shifts=(-shift, -shift), dims=(0, 1))
    rows, cols = height // window, width // window
    # (rows, cols, window*window): token indices of each window, in the official order.
    windows = pixels.view(rows, window, cols, window).permute(0, 2, 1, 3).reshape(rows, cols, -1)
    if shift:
        last_row = torch.zeros(rows, cols, dtype=torch.bool)
        last_row[-1, :] = True
        last_col = torch.zeros(rows, cols, dtype=torch.bool)
        last_col[:, -1] = True
        group_of = last_col.long() + 2 * last_row.long()  # 0 plain, 1 right, 2 bottom, 3 corner
    else:
        group_of = torch.zeros(rows, cols, dtype=torch.long)
    offsets = torch.arange(batch) * tokens
    parts = []
    counts = []
    for g in range(len(WINDOW_GROUPS)):
        members = windows[group_of == g]  # (k, N), row-major window order
        counts.append(batch * members.shape[0])
        parts.append((offsets[:, None, None] + members[None]).reshape(-1))
    gather = torch.cat(parts)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(gather.numel())
    return WindowLayout(gather=gather, scatter=scatter, group_windows=tuple(counts))


class LayoutCache:
    """Bounded cache of window layouts per (batch, size, shift, device).

    Bounded because a service sees many frame sizes when tiling is off; tiled inference
    uses one or two shapes and always hits.
    """

    def __init__(self, window: int, capacity: int = 16) -> None:
        self.window = window
        self.capacity = capacity
        self._entries: OrderedDict[tuple[object, ...], WindowLayout] = OrderedDict()

    def get(
        self, batch: int, height: int, width: int, shift: int, device: torch.device
    ) -> WindowLayout:
        key = (batch, height, width, shift, device)
        layout = self._entries.get(key)
        if layout is None:
            cpu = _build_layout(batch, height, width, self.window, shift)
            layout = WindowLayout(
                gather=cpu.gather.to(device),
                scatter=cpu.scatter.to(device),
                group_windows=cpu.group_windows,
            )
            self._entries[key] = layout
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return layout

    def clear(self) -> None:
        self._entries.clear()
