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

from service.errors import ImageTooLarge
from service.imaging import ImageInfo, verify


class ProbeDeadline:
    """One deadline for checking all the files of a request, naming the file in hand.

    ``async with ProbeDeadline(seconds) as deadline:`` then :meth:`verify` each file in
    order, so that the first bad file is the one named, as when the checks ran inline; past
    the deadline the request is a 413 naming the file being checked.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.current = ""
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> ProbeDeadline:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._timeout.__aexit__(*exc)  # type: ignore[arg-type]
        except TimeoutError:
            raise ImageTooLarge(
                f"{self.current}: checking the files took longer than"
                f" {self.seconds:g} s; the file is too complex to accept"
            ) from None

    async def verify(self, data: bytes, name: str, max_pixels: int) -> ImageInfo:
        """:func:`verify` one file in a worker thread."""
        self.current = name
        return await asyncio.to_thread(verify, data, name, max_pixels)
