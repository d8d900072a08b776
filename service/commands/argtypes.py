"""argparse types shared by the commands and the benchmarks, so that every ``--size``
reads one way: ``WIDTHxHEIGHT``, as image tools write it (1500x1000 is landscape)."""

from __future__ import annotations

import argparse
import re

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def frame_size(text: str) -> tuple[int, int]:
    """``WxH`` as (width, height), each at least 1."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1500x1000, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"a frame needs at least 1x1 pixels, got {text!r}")
    return width, height


def frame_sizes(text: str) -> list[tuple[int, int]]:
    """Comma-separated ``WxH`` sizes, in order."""
    sizes = [frame_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected sizes such as 512x512,1500x1000, got {text!r}")
    return sizes
