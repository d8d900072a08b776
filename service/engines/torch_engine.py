"""The PyTorch backend: the reference implementation, on CPU or CUDA.

On CUDA it runs the network under bf16 autocast by default (fp16 or fp32 on request):
weights stay fp32, matmuls and convs run in the reduced type while LayerNorm, softmax and
the channel attention's frame-wide norms stay in fp32. It can compile the network with
``torch.compile``, and replays each tile shape as a CUDA graph: the tile shape is
fixed for a served model, so after one capture a batch costs one graph launch instead of
a few thousand kernel launches from Python.

On CPU it runs the tiles of a batch one at a time (batch 1), so that a tile's output never
depends on its batch, whatever kernels the libraries pick: a job whose tiles are packed
with other jobs' (``batching.py``) must get exactly its solo result. PyTorch picks a
convolution's kernel by batch size (its own for a small input at batch 1, oneDNN's at
batch 2 and more), so a 32-px tile alone differed from the same tile in a batch by 1.3e-6.
It costs nothing from 64-px tiles up (a CPU gains nothing from batching; see README).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from service.engines.base import TileBatch
from service.engines.runtime import native_bf16_cpu
from service.errors import EngineUnavailable
from service.model.checkpoint import load_afunet
from service.model.network import AFUNet
from service.model.preprocess import build_model_input_torch

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
_GRAPH_CACHE_SIZE = 4


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable("device 'cuda' was requested but no CUDA GPU is available")
    return resolved


def resolve_precision(precision: str, device: torch.device, native_bf16: bool | None = None) -> str:
    """``auto`` is bf16 on CUDA (fp32 range, so no overflow) and fp32 on CPU.

    On CPU ``auto`` stays fp32, exact to the official model. bf16 is served on request
    where the CPU computes it natively (AVX-512 BF16 or AMX: about 15 % less CPU time per
    forward than fp32 here, see README) and refused elsewhere, where emulated bf16 is
    slower than fp32; fp16 needs a GPU. ``native_bf16``: whether this CPU has them (read
    from ``/proc/cpuinfo`` by default).
    """
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in DTYPES:
        raise EngineUnavailable(f"unknown precision {precision!r}; use one of {sorted(DTYPES)}")
    if device.type == "cuda" or precision == "fp32":
        return precision
    if precision == "bf16":
        if native_bf16_cpu() if native_bf16 is None else native_bf16:
            return precision
        raise EngineUnavailable(
            "precision bf16 on CPU needs AVX-512 BF16 or AMX, which this CPU lacks; use fp32"
        )
    raise EngineUnavailable(f"precision {precision} needs a CUDA GPU; use fp32 on CPU")


class _CudaGraph:
    """One captured forward for one input shape, replayed with new data."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor):
        self.static_input = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # builds layouts, autotunes kernels, compiles if compiled
                forward(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = forward(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


class TorchEngine:
    """AFUNet in PyTorch."""

    backend = "torch"

    def __init__(
        self,
        model: AFUNet,
        device: torch.device,
        precision: str = "fp32",
        compile_model: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self._device = device
        self.precision = resolve_precision(precision, device)
        if device.type == "cuda" and self.precision == "fp32":
            # fp32 means fp32: cuDNN would otherwise run convolutions in TF32 (1e-3 off).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.model = model.to(device=device).eval()
        network: Callable[[torch.Tensor], torch.Tensor] = self.model
        if compile_model:
            network = torch.compile(self.model, dynamic=False)
        dtype = DTYPES[self.precision]

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return network(x)

        self._forward = forward
        self.parity_db: float | None = None
        """PSNR-mu against fp32 where a parity check ran (fp16)."""
        self.fallback_reason: str | None = None
        """Why this engine runs another precision than was asked for."""
        self._use_graphs = cuda_graphs and device.type == "cuda"
        self.batch_invariant = device.type == "cpu"
        """On CPU every tile runs alone, so its output is the same in any batch; on a GPU
        the batch runs as one (its kernels may depend on the batch size: not exact)."""
        self._graphs: OrderedDict[tuple[int, ...], _CudaGraph] = OrderedDict()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        precision: str = "fp32",
        compile_model: bool = False,
        cuda_graphs: bool = False,
    ) -> TorchEngine:
        resolved = resolve_device(device)
        return cls(load_afunet(path), resolved, precision, compile_model, cuda_graphs)

    @property
    def device(self) -> str:
        return str(self._device)

    def warmup(self, tile_h: int, tile_w: int, batch: int) -> None:
        # On CPU every forward is one tile: one warms the only shape there is.
        self.run(TileBatch.blank(1 if self.batch_invariant else batch, tile_h, tile_w))

    def _graph(self, x: torch.Tensor) -> _CudaGraph:
        key = tuple(x.shape)
        graph = self._graphs.get(key)
        if graph is None:
            graph = _CudaGraph(self._forward, x)
            self._graphs[key] = graph
            while len(self._graphs) > _GRAPH_CACHE_SIZE:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return graph

    def _input(self, batch: TileBatch) -> torch.Tensor:
        """On CPU the numpy preprocessing (bit-exact to the official code); on a GPU the
        raw 16-bit crops go over and the input is built there (4x fewer bytes to copy,
        and the power function runs on the GPU instead of one host core)."""
        if self._device.type == "cpu":
            return torch.from_numpy(batch.model_input())
        frames = torch.from_numpy(np.ascontiguousarray(batch.frames))
        return build_model_input_torch(frames.to(self._device, non_blocking=True), batch.evs)

    @torch.inference_mode()
    def run(self, batch: TileBatch) -> np.ndarray:
        x = self._input(batch)
        if self.batch_invariant:
            # Each tile in a fresh tensor: the same shape and the same (allocator) alignment
            # as a tile that came alone, hence the same kernels and the same bits.
            return np.concatenate(
                [self._forward(x[i : i + 1].clone()).float().numpy() for i in range(batch.size)]
            )
        out = self._graph(x)(x) if self._use_graphs else self._forward(x)
        return out.float().cpu().numpy()
