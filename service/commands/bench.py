"""``hdr-service bench``: the engine benchmark (see ``service.bench.engines``)."""

from __future__ import annotations

import argparse

from service.config import Settings

HELP = "benchmark backends and precisions against the official-style eager forward"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.bench.engines import build_parser

    build_parser(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from service.bench.engines import report
    from service.bench.engines import run as run_bench

    report(run_bench(args), args.json)
    return 0
