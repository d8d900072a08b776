"""Every --size of the commands and benchmarks reads WIDTHxHEIGHT, one way."""

from __future__ import annotations

import argparse

import pytest

from service.commands.argtypes import frame_size, frame_sizes


def test_frame_size_reads_width_then_height() -> None:
    assert frame_size("1500x1000") == (1500, 1000)
    assert frame_size(" 64 X 48 ") == (64, 48)


@pytest.mark.parametrize("text", ["1500", "1500x", "x1000", "15.5x10", "0x10", "10x0", "-1x5"])
def test_frame_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"WIDTHxHEIGHT|at least 1x1"):
        frame_size(text)


def test_frame_sizes_keep_their_order_and_refuse_an_empty_list() -> None:
    assert frame_sizes("100x72, 512x512,") == [(100, 72), (512, 512)]
    with pytest.raises(argparse.ArgumentTypeError, match="sizes such as"):
        frame_sizes(" , ")


def test_an_argparse_default_is_parsed_like_a_given_value() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=frame_size, default="1500x1000")
    parser.add_argument("--sizes", type=frame_sizes, default="1x2,3x4")
    args = parser.parse_args([])
    assert (args.size, args.sizes) == ((1500, 1000), [(1, 2), (3, 4)])
