#!/usr/bin/env python3
"""Docker HEALTHCHECK of the API image: GET a health path of the local API; exit 0 or 1.

    hdr-healthcheck [PATH]      PATH defaults to /healthz (liveness); /readyz adds Redis

The port is the API's own (HDR_API_PORT, default 8000). Standard library only, so that
a probe costs a few milliseconds and needs no curl in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "8000"
TIMEOUT_SECONDS = 4.0


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{os.environ.get('HDR_API_PORT', DEFAULT_PORT)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            ok = 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {'ok' if ok else response.status}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
