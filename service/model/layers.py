"""Building blocks of AFUNet, written for token-major ``(B, H*W, C)`` tensors.

The whole network keeps its features as tokens in row-major pixel order, which is the
channels-last layout of an image. Convolutions therefore run on a free channels-last view
instead of the flatten/transpose copies the official code makes around every conv.

Attribute names follow the official checkpoint's parameter names so that a release
checkpoint loads without renaming.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from service.model.windows import (
    WINDOW_GROUPS,
    LayoutCache,
    WindowLayout,
    relative_position_index,
    shift_masks,
)


def tokens_to_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H*W, C)`` tokens as an NCHW view (channels-last memory, no copy)."""
    b, _, c = x.shape
    return x.view(b, height, width, c).permute(0, 3, 1, 2)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """NCHW image as ``(B, H*W, C)`` tokens (free when ``x`` is channels-last)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def reflect_conv(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 conv with reflect padding of 1, as the official ``padding_mode='reflect'``.

    Takes any module because the convs sit in ``nn.Sequential`` holders (the official
    parameter names), whose items type-check as plain modules.
    """
    conv = cast(nn.Conv2d, module)
    return F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias, groups=conv.groups
    )


def token_conv(conv: nn.Conv2d, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A reflect-padded 3x3 conv on tokens, returning tokens."""
    image = tokens_to_image(x, *size).contiguous(memory_format=torch.channels_last)
    return image_to_tokens(reflect_conv(conv, image))


def window_layout(
    layouts: LayoutCache, x: torch.Tensor, size: tuple[int, int], shift: int
) -> tuple[WindowLayout, bool]:
    """The layout for ``x`` and whether to use the per-sample token order.

    Eager runs gather over the flattened batch (one index for all tiles, so every window
    group is one contiguous run for the fused kernel). A graph export needs an order that
    does not depend on the batch size, so it gathers each sample along its token axis.
    """
    per_sample = torch.onnx.is_in_onnx_export()
    batch = 1 if per_sample else x.shape[0]
    return layouts.get(batch, size[0], size[1], shift, x.device), per_sample


def to_windows(t: torch.Tensor, layout: WindowLayout, per_sample: bool) -> torch.Tensor:
    """Pixel-ordered ``(B, L, C)`` tokens in window order: ``(B, L, C)`` or ``(B*L, C)``."""
    if per_sample:
        return t.index_select(1, layout.gather)
    b, tokens, c = t.shape
    return t.reshape(b * tokens, c).index_select(0, layout.gather)


def to_pixels(
    t: torch.Tensor, layout: WindowLayout, per_sample: bool, like: torch.Tensor
) -> torch.Tensor:
    """Window-ordered attention output back to pixel order, shaped like ``like``."""
    if per_sample:
        return t.index_select(1, layout.scatter)
    return t.reshape(-1, like.shape[-1]).index_select(0, layout.scatter).view(like.shape)


@cache
def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_eligible(x: torch.Tensor) -> bool:
    """Whether ``linear`` may take oneDNN's path: eager fp32 on CPU, not exported or
    compiled (a graph keeps the standard op, which its own backend fuses)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
        and _onednn_linear_available()
    )


def linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``layer(x)``, optionally followed by exact GELU.

    On CPU in fp32 this runs oneDNN's linear with the GELU fused into it (the kernel
    Inductor's CPU backend uses), which gives the same values as ``nn.Linear`` + ``GELU``
    here (max abs difference 0 on this project's test shapes) in half the time: the
    ``addmm`` path went through a BLAS that was slow on the project's AMD CPU, and
    ``GELU`` is a separate pass over a 2x-wide activation. Linear layers were 44 % of a CPU
    forward.
    """
    if _onednn_eligible(x):
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(
                x, layer.weight, layer.bias, "gelu", [], "none"
            )
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    out = layer(x)
    return F.gelu(out) if gelu else out


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (dropout of the training code omitted: inference only)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, linear(self.fc1, x, gelu=True))


class TokenNorm(nn.Module):
    """Holder of the LayerNorm the official ``PatchEmbed`` applies to flattened tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class WindowAttentionCore(nn.Module):
    """Relative-position-biased attention inside 8x8 (optionally shifted) windows.

    Holds the bias table (a parameter) and, derived from it once per weight load, the four
    additive masks ``bias + shift_mask[group]`` of shape ``(4, heads, N, N)``. Subclasses
    project queries, keys and values; this class runs the grouped fused attention.
    """

    _rel_index: torch.Tensor
    _shift_masks: torch.Tensor
    group_masks: torch.Tensor

    def __init__(self, dim: int, window: int, num_heads: int, shift: int) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.shift = shift
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        n = window * window
        self.register_buffer("_rel_index", relative_position_index(window), persistent=False)
        self.register_buffer(
            "_shift_masks",
            shift_masks(window, shift) if shift else torch.zeros(1, n, n),
            persistent=False,
        )
        self.register_buffer("group_masks", torch.zeros(1, num_heads, n, n), persistent=False)
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the cached masks from the bias table (after weights change)."""
        n = self.window * self.window
        table = self.relative_position_bias_table
        bias = table[self._rel_index.reshape(-1)].view(n, n, self.num_heads).permute(2, 0, 1)
        self.group_masks = (bias[None] + self._shift_masks[:, None].to(bias.dtype)).contiguous()

    def _group_masks(
        self, groups: tuple[int, ...], dtype: torch.dtype
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Each non-empty window group's slice of the layout and its additive mask."""
        start = 0
        for g, count in enumerate(groups):
            if count:
                mask = self.group_masks[g if self.shift else 0]
                yield slice(start, start + count), mask.to(dtype)
            start += count

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: tuple[int, ...]
    ) -> torch.Tensor:
        """Fused attention per window group.

        ``q, k, v``: ``(windows, heads, N, head_dim)`` in layout order. Returns
        ``(windows, N, heads * head_dim)``, contiguous. (5-D inputs: the per-sample path.)
        """
        if q.dim() == 5:
            return self._attend_per_sample(q, k, v, groups)
        head_dim = q.shape[-1]
        pad = (-head_dim) % 8 if q.is_cuda else 0
        if pad:
            # CUDA's fused kernels want head_dim % 8 == 0 (ours: 18 and 12). Zero columns
            # change no q.k product and add output columns that are sliced off again.
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        outs = []
        for sl, mask in self._group_masks(groups, q.dtype):
            out = F.scaled_dot_product_attention(
                q[sl],
                k[sl],
                v[sl],
                attn_mask=mask.expand(sl.stop - sl.start, -1, -1, -1),
                scale=head_dim**-0.5,
            )
            outs.append(out[..., :head_dim].transpose(1, 2))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
        w, n = out.shape[0], out.shape[1]
        return out.reshape(w, n, self.dim)

    def _heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        """Split a projection into heads.

        ``(windows*N, parts*C)`` -> ``(parts, windows, heads, N, head_dim)``, or in the
        per-sample layout ``(B, L, parts*C)`` -> ``(parts, B, windows, heads, N, head_dim)``.
        """
        n = self.window * self.window
        head_dim = self.dim // self.num_heads
        if x.dim() == 3:
            b = x.shape[0]
            return x.view(b, -1, n, parts, self.num_heads, head_dim).permute(3, 0, 1, 4, 2, 5)
        return x.view(-1, n, parts, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)

    def _attend_per_sample(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: tuple[int, ...]
    ) -> torch.Tensor:
        """Attention on ``(B, windows, heads, N, head_dim)`` with masks broadcast over both
        batch and windows: plain matmuls, so an exported graph keeps a dynamic batch axis.
        Returns ``(B, windows*N, C)``."""
        scale = (self.dim // self.num_heads) ** -0.5
        outs = []
        for sl, mask in self._group_masks(groups, q.dtype):
            attn = (q[:, sl] * scale) @ k[:, sl].transpose(-2, -1) + mask
            outs.append((attn.softmax(dim=-1) @ v[:, sl]).transpose(2, 3))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return out.reshape(out.shape[0], -1, self.dim)


class WindowSelfAttention(WindowAttentionCore):
    """W-MSA / SW-MSA of the feature-enhancement blocks."""

    def __init__(self, dim: int, window: int, num_heads: int, shift: int) -> None:
        super().__init__(dim, window, num_heads, shift)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, groups: tuple[int, ...]) -> torch.Tensor:
        q, k, v = self._heads(linear(self.qkv, x), 3)
        return linear(self.proj, self.attend(q, k, v, groups))


class WindowCrossAttention(WindowAttentionCore):
    """W-MCA of the alignment blocks: queries from ``y``, keys and values from ``x``."""

    def __init__(self, dim: int, window: int, num_heads: int, shift: int) -> None:
        super().__init__(dim, window, num_heads, shift)
        self.kv = nn.Linear(dim, dim * 2)
        self.q = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, groups: tuple[int, ...]) -> torch.Tensor:
        (q,) = self._heads(linear(self.q, y), 1)
        k, v = self._heads(linear(self.kv, x), 2)
        return linear(self.proj, self.attend(q, k, v, groups))


class SelfAttentionBlock(nn.Module):
    """Swin block: x + W-MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        layouts: LayoutCache,
    ) -> None:
        super().__init__()
        self.shift = shift
        self.layouts = layouts
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowSelfAttention(dim, window, num_heads, shift)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        layout, per_sample = window_layout(self.layouts, x, size, self.shift)
        out = self.attn(to_windows(self.norm1(x), layout, per_sample), layout.group_windows)
        x = x + to_pixels(out, layout, per_sample, x)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Alignment block: x + W-MCA(x + y, y), then x + depthwise-conv(x)."""

    def __init__(self, dim: int, num_heads: int, window: int, layouts: LayoutCache) -> None:
        super().__init__()
        self.layouts = layouts
        self.attn = WindowCrossAttention(dim, window, num_heads, shift=0)
        # The official code names this depthwise 3x3 conv "mlp".
        self.mlp = nn.Conv2d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        layout, per_sample = window_layout(self.layouts, x, size, 0)
        out = self.attn(
            to_windows(x + y, layout, per_sample),
            to_windows(y, layout, per_sample),
            layout.group_windows,
        )
        x = x + to_pixels(out, layout, per_sample, x)
        return x + token_conv(self.mlp, x, size)


class BlockGroup(nn.Module):
    """Holder of the ``blocks`` list (the official ``residual_group``)."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class AlignmentModule(nn.Module):
    """Spatial attention alignment (one unshifted cross block) with an outer residual."""

    def __init__(self, dim: int, num_heads: int, window: int, layouts: LayoutCache) -> None:
        super().__init__()
        self.residual_group = BlockGroup([CrossAttentionBlock(dim, num_heads, window, layouts)])

    def forward(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = x
        for block in self.residual_group.blocks:
            out = block(out, y, size)
        return out + x


class EnhancementModule(nn.Module):
    """Spatial feature enhancement: Swin blocks (every second one shifted by ``shift``; 0
    for a model trained on crops no larger than a window), a 3x3 conv, residual."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        layouts: LayoutCache,
    ) -> None:
        super().__init__()
        self.residual_group = BlockGroup(
            [
                SelfAttentionBlock(
                    dim, num_heads, window, 0 if i % 2 == 0 else shift, mlp_ratio, layouts
                )
                for i in range(depth)
            ]
        )
        self.conv = nn.Conv2d(dim, dim, 3)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = x
        for block in self.residual_group.blocks:
            out = block(out, size)
        return token_conv(self.conv, out, size) + x


#: Pixels per partial sum of the frame-wide Gram matrices (see ``channel_gram``).
GRAM_CHUNK = 4096


def channel_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^T b`` over the token axis: ``(B, L, C)`` x ``(B, L, C)`` -> ``(B, C, C)``.

    A 24 x 24 result summed over a million pixels is a matmul with a huge inner dimension,
    which GPU BLAS runs with a handful of thread blocks (it was half of all GPU time in a
    1000x1500 frame). Summing 4096-pixel partial products in one batched matmul keeps
    every SM busy, and the pairwise-style summation is also more accurate.
    """
    batch, tokens, channels = a.shape
    pad = (-tokens) % GRAM_CHUNK if tokens > GRAM_CHUNK else 0
    if pad:
        a, b = F.pad(a, (0, 0, 0, pad)), F.pad(b, (0, 0, 0, pad))
    chunks = (tokens + pad) // min(tokens + pad, GRAM_CHUNK)
    a = a.reshape(batch, chunks, -1, channels)
    b = b.reshape(batch, chunks, -1, channels)
    return (a.transpose(-2, -1) @ b).sum(dim=1)


class ChannelAttention(nn.Module):
    """Restormer-style cross attention over channels; its C x C map spans the whole frame.

    Queries come from ``y``, keys and values from ``x``; q and k are L2-normalised over all
    pixels and each head's ``q k^T`` is a (C/heads)^2 map. Computed here without the
    ``(B, heads, C/heads, L)`` copies of the official code: the cosine map is the Gram
    matrix of q and k over the tokens divided by their norms, and since value projection,
    per-head mixing and output projection are all linear maps on channels, they fold into
    one ``C x C`` matrix per sample applied to ``x`` in a single matmul. The frame-wide
    sums run in float32 under any autocast: they overflow fp16 and bf16 sums them coarsely.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.k = nn.Conv2d(dim, dim, 1, bias=False)
        self.v = nn.Conv2d(dim, dim, 1, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        heads = self.num_heads
        channels = x.shape[-1]
        width = channels // heads
        with torch.autocast(x.device.type, enabled=False):
            q = F.linear(y.float(), self.q.weight.flatten(1).float())
            k = F.linear(x.float(), self.k.weight.flatten(1).float())
            eps = 1e-12  # F.normalize's floor on the norm
            q_norm = torch.linalg.vector_norm(q, dim=1).clamp_min(eps)  # (B, C)
            k_norm = torch.linalg.vector_norm(k, dim=1).clamp_min(eps)
            cosine = channel_gram(q, k) / (q_norm[:, :, None] * k_norm[:, None, :])
            blocks = torch.stack(
                [
                    cosine[:, h * width : (h + 1) * width, h * width : (h + 1) * width]
                    for h in range(heads)
                ],
                dim=1,
            )  # (B, heads, w, w): row i of head h weighs the values of that head
            attn = (blocks * self.temperature.float()).softmax(dim=-1)
            # out = v @ blockdiag(attn_h^T) @ P^T with v = x @ V^T: fold into one matrix.
            mixing = torch.zeros(
                attn.shape[0], channels, channels, dtype=attn.dtype, device=attn.device
            )
            for h in range(heads):
                sl = slice(h * width, (h + 1) * width)
                mixing[:, sl, sl] = attn[:, h].transpose(-2, -1)
            values = self.v.weight.flatten(1).float().t()
            project = self.project_out.weight.flatten(1).float().t()
            folded = values @ mixing @ project  # (B, C, C)
        return torch.bmm(x, folded.to(x.dtype))


class FusionModule(nn.Module):
    """Cross-attention proximal operator: x + CA(x + y, y), then x + depthwise-conv(x)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = ChannelAttention(dim, num_heads)
        self.conv = nn.Conv2d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(x + y, y)
        return x + token_conv(self.conv, x, size)


__all__ = [
    "WINDOW_GROUPS",
    "AlignmentModule",
    "EnhancementModule",
    "FusionModule",
    "Mlp",
    "TokenNorm",
    "image_to_tokens",
    "reflect_conv",
    "tokens_to_image",
]
