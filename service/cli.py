"""``hdr-service``: the command line of the service.

Each sub-command is a module of ``service.commands`` named in ``COMMANDS``, defining
``HELP``, ``add_arguments(parser)`` and ``run(args, settings) -> int``; heavy imports stay
inside ``run`` so that ``--help`` and the light commands start fast. User errors
(``ServiceError``: a bad scene, a bad checkpoint) print one line and exit with status 2;
anything else is a bug and keeps its traceback.

Before a command runs, the OpenMP thread pool is sized to the CPUs this process may use
(``engines.runtime.tune_cpu_threads``): that must happen before torch is imported.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from service.config import Settings
from service.engines.runtime import tune_cpu_threads
from service.errors import ServiceError

EXIT_USER_ERROR = 2

#: sub-command -> module in ``service.commands``
COMMANDS: dict[str, str] = {
    "infer": "infer",
    "api": "api",
    "worker": "worker",
    "serve": "serve",
    "export": "export",
    "evaluate": "evaluate",
    "synth": "synth",
    "submit": "submit",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdr-service", description="AFUNet HDR reconstruction service"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"service.commands.{module_name}")
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if "torch" not in sys.modules:  # OpenMP reads its settings once, when torch loads
        tune_cpu_threads()
    module = importlib.import_module(f"service.commands.{COMMANDS[args.command]}")
    try:
        return int(module.run(args, Settings()))
    except ServiceError as exc:
        print(f"hdr-service {args.command}: error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValueError as exc:  # settings validation (pydantic) and bad option values
        print(f"hdr-service {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
