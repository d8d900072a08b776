# It walks the model's nn.ModuleLists, whose items type-check as plain modules:
# mypy: disable-error-code="arg-type"
"""An eager AFUNet forward that moves data the way the official code does (the baseline).

It reads the parameters of our ``AFUNet`` module but runs them as the official
implementation (commit d57f783) does: NCHW <-> token transposes around every conv,
``torch.roll`` + view/permute window partitions, the shift mask rebuilt in every shifted
block on every call (the official model caches it only for its 40x40 training size), the
relative position bias gathered per call, explicit ``q @ k^T`` / softmax / ``@ v``, and
``rearrange``-style copies in the channel attention. Written from the structure of the
network for benchmarking (``python -m benchmarks.engines`` runs it as the ``official-style``
backend) and as an independent check of our fused path; the service never serves it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.engines.base import TileBatch
from service.model.layers import (
    AlignmentModule,
    CrossAttentionBlock,
    EnhancementModule,
    FusionModule,
    SelfAttentionBlock,
    WindowAttentionCore,
)
from service.model.network import AFUNet
from service.model.windows import SHIFT_MASK_VALUE


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    img = torch.zeros((1, h, w, 1))
    slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    count = 0
    for hs in slices:
        for wsl in slices:
            img[:, hs, wsl, :] = count
            count += 1
    windows = _partition(img, ws).view(-1, ws * ws)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, SHIFT_MASK_VALUE).masked_fill(mask == 0, 0.0)


def _attention(
    core: WindowAttentionCore, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> Tensor:
    n = q.shape[-2]
    q = q * (q.shape[-1] ** -0.5)
    attn = q @ k.transpose(-2, -1)
    bias = core.relative_position_bias_table[core._rel_index.reshape(-1)].view(n, n, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(-1, nw, core.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, core.num_heads, n, n)
    return attn.softmax(dim=-1) @ v


def _self_block(block: SelfAttentionBlock, x: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = size
    b, _, c = x.shape
    core = block.attn
    ws, shift, heads = core.window, core.shift, core.num_heads
    shortcut = x
    x = block.norm1(x).view(b, h, w, c)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = _partition(x, ws).view(-1, ws * ws, c)
    mask = _shift_mask(h, w, ws, shift).to(x.device) if shift else None
    bw = windows.shape[0]
    qkv = core.qkv(windows).reshape(bw, ws * ws, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    out = _attention(core, qkv[0], qkv[1], qkv[2], mask)
    out = core.proj(out.transpose(1, 2).reshape(bw, ws * ws, c))
    x = _reverse(out.view(-1, ws, ws, c), ws, h, w)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + x.reshape(b, h * w, c)
    return x + block.mlp(block.norm2(x))


def _conv_tokens(conv: nn.Conv2d, x: Tensor, size: tuple[int, int]) -> Tensor:
    b, _, c = x.shape
    image = x.transpose(1, 2).view(b, c, *size)
    out = F.conv2d(
        F.pad(image, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias, groups=conv.groups
    )
    return out.flatten(2).transpose(1, 2)


def _cross_block(block: CrossAttentionBlock, x: Tensor, y: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = size
    b, _, c = x.shape
    core = block.attn
    ws, heads = core.window, core.num_heads
    shortcut = x
    x = (x + y).view(b, h, w, c)
    xw = _partition(x, ws).view(-1, ws * ws, c)
    yw = _partition(y.view(b, h, w, c), ws)
    bw = xw.shape[0]
    q = core.q(yw).reshape(bw, ws * ws, 1, heads, c // heads).permute(2, 0, 3, 1, 4)[0]
    kv = core.kv(xw).reshape(bw, ws * ws, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    out = core.proj(_attention(core, q, kv[0], kv[1], None).transpose(1, 2).reshape(bw, -1, c))
    x = _reverse(out.view(-1, ws, ws, c), ws, h, w).view(b, h * w, c)
    x = shortcut + x
    return x + _conv_tokens(block.mlp, x, size)


def _fusion(module: FusionModule, x: Tensor, y: Tensor, size: tuple[int, int]) -> Tensor:
    b, _, c = x.shape
    h, w = size
    attn_mod = module.attn
    heads = attn_mod.num_heads
    x = x.permute(0, 2, 1).reshape(b, c, h, w)
    y = y.permute(0, 2, 1).reshape(b, c, h, w)
    s = x + y
    q = F.conv2d(y, attn_mod.q.weight).reshape(b, heads, c // heads, h * w)
    k = F.conv2d(s, attn_mod.k.weight).reshape(b, heads, c // heads, h * w)
    v = F.conv2d(s, attn_mod.v.weight).reshape(b, heads, c // heads, h * w)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1) * attn_mod.temperature).softmax(dim=-1)
    out = F.conv2d((attn @ v).reshape(b, c, h, w), attn_mod.project_out.weight)
    x = x + out
    x = x + F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="reflect"), module.conv.weight, module.conv.bias, groups=c
    )
    return x.flatten(2).transpose(1, 2).contiguous()


def _align(module: AlignmentModule, x: Tensor, y: Tensor, size: tuple[int, int]) -> Tensor:
    out = x
    for block in module.residual_group.blocks:
        out = _cross_block(block, out, y, size)
    return out + x


def _enhance(module: EnhancementModule, x: Tensor, size: tuple[int, int]) -> Tensor:
    out = x
    for block in module.residual_group.blocks:
        out = _self_block(block, out, size)
    return _conv_tokens(module.conv, out, size) + x


class OfficialStyleEngine:
    """The baseline as an ``Engine``, so the benchmark times it through the same pipeline."""

    backend = "official-style"
    precision = "fp32"
    batch_invariant = False  # the whole batch in one forward, as the official code
    device = "cpu"

    def __init__(self, model: AFUNet) -> None:
        self.model = model.float().eval().cpu()

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.run(TileBatch.blank(batch, tile_h, tile_w))

    def run(self, batch: TileBatch) -> np.ndarray:
        return official_style_forward(self.model, torch.from_numpy(batch.model_input())).numpy()


@torch.inference_mode()
def official_style_forward(model: AFUNet, x: torch.Tensor) -> torch.Tensor:
    """Run ``model``'s weights the official way; same contract as ``model(x)``."""
    height, width = x.shape[-2:]
    ws = model.config.window_size
    x = F.pad(x, (0, (-width) % ws, 0, (-height) % ws), mode="reflect")
    size = (x.shape[2], x.shape[3])
    e1, e2, e3 = x.chunk(3, dim=1)

    def conv(c: nn.Conv2d, t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), c.weight, c.bias)

    f1, f2, f3 = conv(model.conv1[0], e1), conv(model.conv2[0], e2), conv(model.conv3[0], e3)
    tokens = model.patch_embed(torch.cat((f1, f2, f3), dim=1).flatten(2).transpose(1, 2))
    w_x1, ref, w_x3 = tokens.chunk(3, dim=2)
    x_k = ref.clone()
    for i in range(len(model.SFM)):
        w_x1 = _align(model.a_12[i], model.A1[i](x_k), w_x1, size)
        w_x3 = _align(model.a_32[i], model.A3[i](x_k), w_x3, size)
        df = _enhance(model.SFM[i], torch.cat([w_x1, x_k, w_x3], 2), size)
        u_deep, x_deep, v_deep = df.chunk(3, dim=2)
        u_k = _fusion(model.f_12[i], x_k, u_deep, size) + x_k
        v_k = _fusion(model.f_32[i], x_k, v_deep, size) + x_k
        s = model.A2_T[i](ref) + model.beta1[i] * u_k + model.beta2[i] * v_k
        x_k = model.inv[i](s)
        x_k = model.mlps_end[i](torch.cat((u_k, x_k, v_k), dim=2)) + x_deep
    b, _, c = x_k.shape
    features = x_k.transpose(1, 2).view(b, c, *size) + conv(model.conv_skip, f2)
    return torch.sigmoid(conv(model.out[0], features))[:, :, :height, :width]
