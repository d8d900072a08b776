"""The AFUNet network (Ni et al., ICCV 2025) for inference.

Structure, from the paper and the official code (commit d57f783): three 3x3 convs embed the
three exposures; four unfolded iterations each align the non-reference features to the
reference with window cross attention (``a_12``, ``a_32``), enhance all of them with a
Swin group (``SFM``), fuse with channel cross attention (``f_12``, ``f_32``) and apply a
learned data-consistency step (``A1``, ``A3``, ``A2_T``, ``inv``, ``beta``); a conv skip
and a sigmoid conv give the linear HDR image in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from service.model.layers import (
    AlignmentModule,
    EnhancementModule,
    FusionModule,
    Mlp,
    TokenNorm,
    image_to_tokens,
    reflect_conv,
    tokens_to_image,
)
from service.model.windows import LayoutCache


@dataclass(frozen=True)
class AFUNetConfig:
    """Architecture hyper-parameters; the defaults are those of every released checkpoint."""

    in_chans: int = 18
    embed_dim: int = 72
    depths: tuple[int, ...] = field(default=(5, 5, 5, 5))
    num_heads: tuple[int, ...] = field(default=(4, 4, 4, 4))
    window_size: int = 8
    mlp_ratio: float = 2.0
    shift_windows: bool = True
    """Whether every second enhancement block shifts its windows. The official blocks
    follow Swin's rule: a model built with ``min(img_size) <= window_size`` never shifts
    (at any frame size). Such a checkpoint says so by its missing ``attn_mask`` buffers
    (``service.model.checkpoint.checkpoint_config``); every released one shifts."""

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads must have one entry per iteration")
        if self.embed_dim % 3 or self.in_chans % 3:
            raise ValueError("embed_dim and in_chans must split into three exposures")


class AFUNet(nn.Module):
    """AFUNet, inference only: ``(B, 18, H, W)`` inputs to ``(B, 3, H, W)`` linear HDR.

    Any ``H, W`` works: the frame is reflect-padded to a multiple of the window size and
    the output cropped back, as in the official ``check_image_size``. Window layouts are
    cached per frame size (``layouts``), attention masks per weight load.
    """

    def __init__(self, config: AFUNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or AFUNetConfig()
        self.config = cfg
        dim = cfg.embed_dim
        part = dim // 3
        per_exposure = cfg.in_chans // 3
        hidden = int(part * cfg.mlp_ratio)
        iterations = len(cfg.depths)
        self.layouts = LayoutCache(cfg.window_size)

        self.beta1 = nn.ParameterList([nn.Parameter(torch.tensor(0.5)) for _ in range(iterations)])
        self.beta2 = nn.ParameterList([nn.Parameter(torch.tensor(0.5)) for _ in range(iterations)])
        self.A2_T = nn.ModuleList([Mlp(part, hidden, part) for _ in range(iterations)])
        self.A1 = nn.ModuleList([Mlp(part, hidden, part) for _ in range(iterations)])
        self.A3 = nn.ModuleList([Mlp(part, hidden, part) for _ in range(iterations)])
        self.inv = nn.ModuleList([Mlp(part, hidden, part) for _ in range(iterations)])

        self.conv1 = nn.Sequential(nn.Conv2d(per_exposure, part, 3))
        self.conv2 = nn.Sequential(nn.Conv2d(per_exposure, part, 3))
        self.conv3 = nn.Sequential(nn.Conv2d(per_exposure, part, 3))
        self.patch_embed = TokenNorm(dim)

        self.a_12 = nn.ModuleList(
            [AlignmentModule(part, h // 2, cfg.window_size, self.layouts) for h in cfg.num_heads]
        )
        self.a_32 = nn.ModuleList(
            [AlignmentModule(part, h // 2, cfg.window_size, self.layouts) for h in cfg.num_heads]
        )
        self.f_12 = nn.ModuleList([FusionModule(part, h // 2) for h in cfg.num_heads])
        self.f_32 = nn.ModuleList([FusionModule(part, h // 2) for h in cfg.num_heads])
        shift = cfg.window_size // 2 if cfg.shift_windows else 0
        self.SFM = nn.ModuleList(
            [
                EnhancementModule(dim, d, h, cfg.window_size, shift, cfg.mlp_ratio, self.layouts)
                for d, h in zip(cfg.depths, cfg.num_heads, strict=True)
            ]
        )
        self.mlps_end = nn.ModuleList([Mlp(dim, hidden, part) for _ in range(iterations)])
        self.conv_skip = nn.Conv2d(part, part, 3)
        self.out = nn.Sequential(nn.Conv2d(part, 3, 3), nn.Sigmoid())

        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_caches())
        # Inference only: no autograd graph, even outside inference_mode (a traced export
        # with parameters that require grad keeps every activation alive, 3x the memory).
        self.requires_grad_(False)
        self.eval()

    def refresh_caches(self) -> None:
        """Rebuild every weight-derived cache; called after each ``load_state_dict``."""
        for module in self.modules():
            refresh = getattr(module, "refresh", None)
            if module is not self and callable(refresh):
                refresh()
        self.layouts.clear()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ws = self.config.window_size
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h >= h or pad_w >= w:
            raise ValueError(f"frame {w}x{h} is too small to reflect-pad to the {ws}-pixel window")
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = self._pad(x)
        size = (x.shape[-2], x.shape[-1])
        e1, e2, e3 = x.chunk(3, dim=1)
        f1 = reflect_conv(self.conv1[0], e1)
        f2 = reflect_conv(self.conv2[0], e2)
        f3 = reflect_conv(self.conv3[0], e3)
        tokens = self.patch_embed(image_to_tokens(torch.cat((f1, f2, f3), dim=1)))
        w_x1, ref, w_x3 = (t.contiguous() for t in tokens.chunk(3, dim=2))
        x_k = ref
        for i in range(len(self.SFM)):
            # Alignment of the short and long exposures to the current reference estimate.
            w_x1 = self.a_12[i](self.A1[i](x_k), w_x1, size)
            w_x3 = self.a_32[i](self.A3[i](x_k), w_x3, size)
            u_deep, x_deep, v_deep = self.SFM[i](torch.cat((w_x1, x_k, w_x3), dim=2), size).chunk(
                3, dim=2
            )
            # Fusion, then the data-consistency step of the unfolded optimisation.
            u_k = self.f_12[i](x_k, u_deep, size) + x_k
            v_k = self.f_32[i](x_k, v_deep, size) + x_k
            x_k = self.inv[i](self.A2_T[i](ref) + self.beta1[i] * u_k + self.beta2[i] * v_k)
            x_k = self.mlps_end[i](torch.cat((u_k, x_k, v_k), dim=2)) + x_deep
        features = tokens_to_image(x_k, *size) + reflect_conv(self.conv_skip, f2)
        out = torch.sigmoid(reflect_conv(self.out[0], features))
        return out[:, :, :height, :width]
