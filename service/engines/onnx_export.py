"""ONNX export of AFUNet for one static tile shape with a dynamic batch axis.

For a fixed tile the window permutations and the four grouped masks per attention block
are constants, so they are folded into the graph as small initializers (a gather index of
H*W int64 per shift, and ``(4, heads, 64, 64)`` masks) instead of the dense
``(windows, 64, 64)`` shift masks the official model would need per shifted block. Opset
18 gives ``LayerNormalization`` a single node (any opset >= 17 does), which TensorRT runs
in FP32 in reduced-precision engines.

The graph is captured with ``torch.export`` (the ``dynamo`` exporter), which traces with
fake tensors: memory stays flat in the tile size (719 MB at 512x512 here), where the
TorchScript tracer keeps every activation of a real forward alive (about 45 KB per pixel,
so a 512x512 export needs about 12 GB and a whole 1000x1500 frame about 70 GB).

Reduced-precision graphs (fp16, bf16) carry their precision in their own types, for
TensorRT's strongly typed networks (TensorRT 11 removed the builder's FP16/BF16 flags, and
10.x deprecated them): the model is traced under autocast, so convolutions, linear layers
and attention matmuls are fp16/bf16 while the residual stream, every LayerNorm and the
channel attention's frame-wide norms and softmax stay fp32, as in the torch backend on a
GPU. Inputs and outputs stay fp32. They use opset 22, the first whose ``Conv`` takes
bfloat16.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from service.model.network import AFUNet

log = logging.getLogger(__name__)

MAX_BATCH = 64
INPUT_NAME = "exposures"
OUTPUT_NAME = "hdr"
#: The opset of each precision's graph: 18 gives LayerNormalization one node (any opset
#: >= 17 does); bfloat16 convolutions need 22.
OPSETS = {"fp32": 18, "fp16": 22, "bf16": 22}
_LOW_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter prints progress lines and logs guard traces, and onnxscript's
    optimiser logs each of its ~1,700 rewrites at INFO; keep them out.

    (``torch._guards`` logs a shape-env guard it cannot build for the symbolic batch at
    ERROR level; the export is complete and checked regardless.)
    """
    names = (
        "torch.onnx",
        "torch._dynamo",
        "torch.export",
        "torch._guards",
        "onnx_ir",
        "onnxscript",
    )
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class MixedPrecisionAFUNet(torch.nn.Module):
    """AFUNet with autocast's casts written into the graph, for a strongly typed export.

    Traced under CPU autocast, which casts the inputs of convolutions, linear layers and
    matmuls to the low type; elementwise ops then promote to the wider type, so the
    residual stream stays fp32, and the channel attention computes its norms in fp32 by
    itself. CPU autocast leaves LayerNorm in its input's type where CUDA autocast runs it
    in fp32 (fp16 LayerNorm overflows), so each LayerNorm here gets fp32 input.
    """

    def __init__(self, model: AFUNet, precision: str) -> None:
        super().__init__()
        self.net = copy.deepcopy(model)  # the hooks below must not touch the caller's model
        self.dtype = _LOW_DTYPES[precision]
        for module in self.net.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.register_forward_pre_hook(_fp32_inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.net(x).float()


def _fp32_inputs(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple:
    return tuple(a.float() for a in args)


def _padded(size: int, window: int) -> int:
    return size + (-size) % window


def export_onnx(
    model: AFUNet, path: str | Path, tile_h: int, tile_w: int, precision: str = "fp32"
) -> Path:
    """Write ``model`` as ONNX for ``(batch, 18, tile_h, tile_w)`` fp32 inputs computed in
    ``precision`` (fp32, fp16 or bf16); returns the path."""
    import onnx

    if precision not in OPSETS:
        raise ValueError(f"unknown ONNX precision {precision!r}; use one of {sorted(OPSETS)}")
    opset = OPSETS[precision]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    window = model.config.window_size
    height, width = _padded(tile_h, window), _padded(tile_w, window)
    for shift in {0, window // 2}:
        # Built here so that tracing captures them as constants, not as traced ops.
        model.layouts.get(1, height, width, shift, torch.device("cpu"))
    # Batch 2, not 1: torch.export specialises a dimension traced at size 1 to a constant.
    dummy = torch.zeros(2, model.config.in_chans, tile_h, tile_w)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # exporter chatter about deprecations
        program = torch.onnx.export(
            model if precision == "fp32" else MixedPrecisionAFUNet(model, precision),
            (dummy,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
            verbose=False,
        )
        if program is None:  # only when exporting to a file object, which we never do
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)  # with strict type inference
    tmp.replace(path)
    log.info(
        "exported %s ONNX %s for %dx%d tiles (opset %d)", precision, path, tile_w, tile_h, opset
    )
    return path
