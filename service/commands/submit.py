"""``hdr-service submit``: send three exposures to a running service and save the result.

The command line of :mod:`service.client`: submit, show the job's tiles done of total as a
progress bar on stderr, download the result in the format the output's extension names.
It talks to a server, so the server's address and key come from flags, or from
``AFUNET_URL`` / ``AFUNET_API_KEY``: the ``HDR_*`` variables configure the service
itself (``service.config.Settings``), and a client machine has none of them.

Exit status: 0 saved; 2 the request was refused (a 4xx: one line with the status, the
API's error code and its message) or the command line is wrong; 1 anything else (the
job failed, the server is unreachable or kept answering 5xx, the wait timed out).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Final

from service.config import Settings

HELP = "submit three exposures to a running service and save its result, with progress"

#: Environment variables the command falls back on (client side: not ``HDR_`` settings).
URL_VARIABLE: Final = "AFUNET_URL"
API_KEY_VARIABLE: Final = "AFUNET_API_KEY"
EXIT_FAILED: Final = 1
EXIT_REFUSED: Final = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "exposures",
        nargs="+",
        type=Path,
        metavar="EXPOSURE",
        help="the three exposures of one scene (PNG, JPEG or TIFF), any order",
    )
    parser.add_argument(
        "--output", "-o", type=Path, required=True, help="result file: .exr, .hdr or .png"
    )
    metadata = parser.add_mutually_exclusive_group()
    metadata.add_argument(
        "--ev",
        help="EV stops of the exposures in the order given, e.g. --ev=-2,0,2 (with '=' when"
        " the first is negative); without --ev or --exposure-times the EXIF decides",
    )
    metadata.add_argument(
        "--exposure-times", metavar="SECONDS", help="exposure times, e.g. 0.01,0.04,0.16"
    )
    parser.add_argument("--model", help="a model of GET /v1/models (default: the server's)")
    parser.add_argument(
        "--tile-size", type=int, help="tile edge in pixels; 0 runs the frame untiled"
    )
    parser.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float32",
        help="OpenEXR sample type (default float32)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_VARIABLE),
        help=f"the service (default ${URL_VARIABLE}, else http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"API key, when the service has keys (default ${API_KEY_VARIABLE})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting after this long (the job goes on; default: wait)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="show the progress bar (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.client import DEFAULT_URL, Client, ClientError, result_format_of

    fmt = result_format_of(args.output)  # before submitting: a bad name costs no job
    if not args.verbose:  # httpx logs every request at INFO: noise around the one-line error
        logging.getLogger("httpx").setLevel(logging.WARNING)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        with Client(args.url or DEFAULT_URL, api_key=args.api_key) as client:
            job = client.submit(
                args.exposures,
                evs=args.ev,
                exposure_times=args.exposure_times,
                model=args.model,
                tile_size=args.tile_size,
            )
            with tqdm(
                total=0, unit="tile", desc=f"job {job.id[:8]}", file=sys.stderr, disable=not show
            ) as bar:

                def on_progress(done: int, total: int) -> None:
                    if total and bar.total != total:
                        bar.total = total
                    bar.set_postfix_str(job.status.value, refresh=False)  # queued, running
                    bar.update(done - bar.n)

                info = job.wait(progress=on_progress, timeout=args.timeout)
            args.output.write_bytes(job.result(fmt, args.dtype))
    except ClientError as exc:
        print(f"hdr-service submit: error: {exc}", file=sys.stderr)
        refused = exc.status is not None and 400 <= exc.status < 500
        return EXIT_REFUSED if refused else EXIT_FAILED
    except OSError as exc:  # an exposure that cannot be read, an output that cannot be written
        print(f"hdr-service submit: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    seconds = sum(info.timings.values())
    print(
        f"wrote {args.output} ({info.width}x{info.height}, {info.progress.tiles_total} tile(s),"
        f" model {info.model}, {info.engine}, {seconds:.1f} s in the service)"
    )
    return 0
