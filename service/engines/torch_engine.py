"""The PyTorch backend: the reference implementation, on CPU or CUDA."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineUnavailable
from ..model import AFUNet, load_afunet

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable("device 'cuda' was requested but no CUDA GPU is available")
    return resolved


class TorchEngine:
    """AFUNet in eager PyTorch (float32)."""

    backend = "torch"
    precision = "fp32"

    def __init__(self, model: AFUNet, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self._device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> TorchEngine:
        resolved = resolve_device(device)
        return cls(load_afunet(path, resolved), resolved)

    @property
    def device(self) -> str:
        return str(self._device)

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        self.run(np.zeros((batch, 18, tile_h, tile_w), dtype=np.float32))

    @torch.inference_mode()
    def run(self, tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).to(self._device)
        return self.model(x).float().cpu().numpy()
