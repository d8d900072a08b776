"""Test data for the blob store tests: sources that behave like uploads, and contents
whose every misplaced byte shows."""

from __future__ import annotations

import io
import threading
import time

#: Smallest part S3 (and moto) accept in a multipart upload, but for the last one.
MIN_PART_BYTES = 5 * 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes cycling with a prime period (251) that no power-of-two part or chunk
    size divides, so a part out of place, doubled or missing shows."""
    return bytes((i * 7 + seed) % 251 for i in range(251)) * (size // 251) + bytes(
        (i * 7 + seed) % 251 for i in range(size % 251)
    )


class SlowSource(io.RawIOBase):
    """``data`` read back in short, slow reads, like an upload arriving over a network;
    ``started`` is set on the first read."""

    def __init__(self, data: bytes, chunk: int = 256 * 1024, delay: float = 0.005) -> None:
        self._data = memoryview(data)
        self._offset = 0
        self._chunk = chunk
        self._delay = delay
        self.started = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.started.set()
        time.sleep(self._delay)
        n = min(len(buffer), self._chunk, len(self._data) - self._offset)
        buffer[:n] = self._data[self._offset : self._offset + n]
        self._offset += n
        return n
