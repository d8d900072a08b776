"""Checking uploaded files off the event loop, under one deadline per request.

Reading headers (Pillow's JPEG marker walk, tifffile's IFDs) and inflating a PNG's pixel
stream to prove it complete are CPU work: run on the event loop, one crafted upload
stalled every request of the process, ``/healthz`` included. Here they run in a worker
thread (:func:`asyncio.to_thread`), and the request waits at most
``HDR_PROBE_TIMEOUT_SECONDS`` for all its files together.

A thread cannot be killed: one that overruns the deadline finishes in the background.
What bounds its work is the walkers' own caps (``jpeg.MAX_HEADER_MARKERS``,
``png.MAX_CHUNKS``), the pixel limit checked before any inflate, and the upload size
limit; the deadline bounds what the client waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.config import Settings
from service.errors import ImageTooLarge
from service.imaging import ImageInfo, verify


async def verify_uploads(
    blobs: Sequence[bytes], names: Sequence[str], settings: Settings
) -> list[ImageInfo]:
    """:func:`verify` each file in a thread, in order; 413 when the deadline passes.

    In order, one at a time, so that the first bad file is the one named, as it was when
    the checks ran inline.
    """
    infos: list[ImageInfo] = []
    current = names[0] if names else ""
    try:
        async with asyncio.timeout(settings.probe_timeout_seconds):
            for blob, name in zip(blobs, names, strict=True):
                current = name
                infos.append(await asyncio.to_thread(verify, blob, name, settings.max_pixels))
    except TimeoutError:
        raise ImageTooLarge(
            f"{current}: checking the files took longer than"
            f" {settings.probe_timeout_seconds:g} s; the file is too complex to accept"
        ) from None
    return infos
