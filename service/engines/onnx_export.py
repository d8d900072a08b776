"""ONNX export of AFUNet for one static tile shape with a dynamic batch axis.

For a fixed tile the window permutations and the four grouped masks per attention block
are constants, so they are folded into the graph as small initializers (a gather index of
H*W int64 per shift, and ``(4, heads, 64, 64)`` masks) instead of the dense
``(windows, 64, 64)`` shift masks the official model would need per shifted block. Opset
17 gives ``LayerNormalization`` a single node, which TensorRT runs in FP32 in reduced-
precision engines.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from ..model import AFUNet

log = logging.getLogger(__name__)

INPUT_NAME = "exposures"
OUTPUT_NAME = "hdr"
DEFAULT_OPSET = 17


def _padded(size: int, window: int) -> int:
    return size + (-size) % window


def export_onnx(
    model: AFUNet, path: str | Path, tile_h: int, tile_w: int, opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``model`` as ONNX for ``(batch, 18, tile_h, tile_w)`` inputs; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().cpu()
    window = model.config.window_size
    height, width = _padded(tile_h, window), _padded(tile_w, window)
    for shift in {0, window // 2}:
        # Built here so that tracing captures them as constants, not as traced ops.
        model.layouts.get(1, height, width, shift, torch.device("cpu"))
    dummy = torch.zeros(1, model.config.in_chans, tile_h, tile_w)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constants and deprecations
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)
    log.info("exported ONNX %s for %dx%d tiles (opset %d)", path, tile_w, tile_h, opset)
    return path
