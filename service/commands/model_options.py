"""Options shared by the commands that run a model offline (``infer``, ``evaluate``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import Settings

if TYPE_CHECKING:
    from service.engines.registry import ServedModel

ArgumentTarget = argparse.ArgumentParser | argparse._ArgumentGroup


def add_model_arguments(target: ArgumentTarget) -> None:
    """--model, --checkpoint, --engine, --precision, --device."""
    target.add_argument(
        "--model", help="model of the repository to run (default: HDR_DEFAULT_MODEL, afunet)"
    )
    target.add_argument(
        "--checkpoint",
        type=Path,
        help="AFUNet weights (official .pth or a state dict) instead of the repository's",
    )
    target.add_argument(
        "--engine",
        choices=("torch", "onnxruntime", "tensorrt", "numpy"),
        help="force a backend instead of the model's config.yaml order",
    )
    target.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="network arithmetic (fp16 needs a GPU; bf16 a GPU or a CPU with AVX-512 BF16 or AMX)",
    )
    target.add_argument("--device", choices=("auto", "cpu", "cuda"), help="inference device")


def add_tiling_arguments(target: ArgumentTarget) -> None:
    """--tile-size, --tile-overlap, --tile-batch, --no-tile."""
    target.add_argument("--tile-size", type=int, help="tile edge in pixels, a multiple of 8")
    target.add_argument("--tile-overlap", type=int, help="overlap between tiles in pixels")
    target.add_argument("--tile-batch", type=int, help="tiles per engine call")
    target.add_argument("--no-tile", action="store_true", help="run each whole frame at once")


def open_model(args: argparse.Namespace, settings: Settings) -> ServedModel:
    """The model the options name, with the process tuned for inference.

    A flag counts as its HDR_* variable set (the highest level: flag, then variable, then
    config.yaml, then the default; ``service.engines.registry.resolve_serving``).
    """
    from service.engines.registry import load_model
    from service.engines.runtime import keep_freed_memory

    overrides = {
        key: value
        for key, value in (
            ("device", args.device),
            ("engine", args.engine),
            ("precision", args.precision),
            ("tile_size", getattr(args, "tile_size", None)),
            ("tile_overlap", getattr(args, "tile_overlap", None)),
            ("tile_batch", getattr(args, "tile_batch", None)),
        )
        if value is not None
    }
    keep_freed_memory()
    return load_model(settings.model_copy(update=overrides), args.model, args.checkpoint)
