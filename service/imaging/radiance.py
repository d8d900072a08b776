"""Radiance RGBE (``.hdr``) files, written and read in numpy.

RGBE stores each pixel as three 8-bit mantissas sharing one 8-bit exponent: 32 bits per
pixel, about 1% relative precision, a huge dynamic range, and the format of the field's
labels (Kalantari's ``HDRImg.hdr``). Scanlines 8 to 32767 pixels wide are written with the
standard "new-style" run-length encoding (each channel of a scanline run-length encoded
separately), which every Radiance reader understands; both it and flat files are read.

Quantisation: writing rounds each mantissa to the nearest byte; reading returns
``byte * 2**(exponent - 136)``, the convention of Bruce Walter's ``rgbe.c`` that OpenCV,
FreeImage and imageio follow (Radiance's own reader adds half a step). Labels decoded here
therefore match what the field's evaluation scripts compute with.
"""

from __future__ import annotations

import re

import numpy as np

from service.errors import UnsupportedImage
from service.imaging.formats import label

_MIN_RLE_WIDTH, _MAX_RLE_WIDTH = 8, 0x7FFF
_MIN_RUN = 4  # shorter repeats cost less as literals (a run costs 2 bytes)
_BLOCK_SCANLINES = 128  # bounds the index arrays' memory on large images

_RGBE_MAX = float(np.ldexp(255.0, 127 - 8))
"""The largest value RGBE can hold (mantissa 255, exponent byte 255)."""

_RESOLUTION = re.compile(rb"^([-+])([XY]) +(\d+) +([-+])([XY]) +(\d+)$")


# -- pixels <-> RGBE quadruples ---------------------------------------------------------------


def _to_rgbe(hdr: np.ndarray) -> np.ndarray:
    """H x W x 4 uint8 RGBE of an H x W x 3 image.

    RGBE has no sign and no NaN: negative and NaN values become 0, and values past the
    format's range are clamped to its largest one.
    """
    rgb = np.nan_to_num(hdr.astype(np.float64), nan=0.0, posinf=_RGBE_MAX, neginf=0.0)
    rgb = np.clip(rgb, 0.0, _RGBE_MAX)
    brightest = rgb.max(axis=2)
    mantissa, exponent = np.frexp(brightest)  # brightest = mantissa * 2**exponent
    exponent += np.rint(mantissa * 256.0) >= 256.0  # 255.5/256 and up round into the next step
    exponent = np.minimum(exponent, 127)
    rgbe = np.empty((*hdr.shape[:2], 4), dtype=np.uint8)
    scaled = np.rint(np.ldexp(rgb, (8 - exponent)[:, :, None]))
    rgbe[:, :, :3] = np.clip(scaled, 0, 255)
    rgbe[:, :, 3] = np.clip(exponent + 128, 0, 255)
    rgbe[brightest < 1e-32] = 0  # rgbe.c's threshold for black
    return rgbe


def _from_rgbe(rgbe: np.ndarray) -> np.ndarray:
    """H x W x 3 float32 of H x W x 4 RGBE quadruples (exponent byte 0 is black)."""
    exponent = rgbe[:, :, 3:4].astype(np.int32) - 136
    rgb = np.ldexp(rgbe[:, :, :3].astype(np.float32), exponent)
    rgb[rgbe[:, :, 3] == 0] = 0.0
    return rgb.astype(np.float32, copy=False)


# -- run-length encoding ----------------------------------------------------------------------


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    np.cumsum(values[:-1], out=out[1:])
    return out


def _rle_block(rgbe: np.ndarray) -> np.ndarray:
    """New-style RLE bytes of a few scanlines (h x W x 4), each with its 4-byte header.

    Vectorised: runs of at least ``_MIN_RUN`` equal bytes become (128 + n, value) pairs of
    at most 127 bytes; the stretches between them become literal chunks of at most 128.
    """
    height, width, _ = rgbe.shape
    rows = np.ascontiguousarray(rgbe.transpose(0, 2, 1)).reshape(-1)  # scanline, channel, x
    n = rows.size
    column = np.arange(n, dtype=np.int64) % width

    run_start = np.ones(n, dtype=bool)
    run_start[1:] = rows[1:] != rows[:-1]
    run_start |= column == 0
    run_starts = np.flatnonzero(run_start)
    run_length = np.diff(np.append(run_starts, n))
    is_run = np.repeat(run_length >= _MIN_RUN, run_length)  # per byte: inside a long run

    after_run = np.zeros(n, dtype=bool)
    after_run[1:] = is_run[:-1]
    segment_start = (column == 0) | (run_start & is_run) | (~is_run & after_run)
    segment_starts = np.flatnonzero(segment_start)
    segment_length = np.diff(np.append(segment_starts, n))
    in_segment = np.arange(n, dtype=np.int64) - np.repeat(segment_starts, segment_length)
    chunk_start = in_segment % np.where(is_run, 127, 128) == 0
    chunk_starts = np.flatnonzero(chunk_start)
    chunk_length = np.diff(np.append(chunk_starts, n))
    chunk_is_run = is_run[chunk_starts]
    chunk_size = np.where(chunk_is_run, 2, 1 + chunk_length)

    scanline_of_chunk = chunk_starts // (4 * width)
    before = _exclusive_cumsum(chunk_size)
    chunk_at = before + 4 * (scanline_of_chunk + 1)  # each scanline's 4-byte header precedes
    out = np.empty(int(chunk_size.sum()) + 4 * height, dtype=np.uint8)

    first_chunk = np.searchsorted(scanline_of_chunk, np.arange(height))
    header_at = before[first_chunk] + 4 * np.arange(height)
    out[header_at] = 2
    out[header_at + 1] = 2
    out[header_at + 2] = width >> 8
    out[header_at + 3] = width & 0xFF

    out[chunk_at] = np.where(chunk_is_run, 128 + chunk_length, chunk_length)
    out[chunk_at[chunk_is_run] + 1] = rows[chunk_starts[chunk_is_run]]
    literal = np.flatnonzero(~is_run)
    chunk_of = np.cumsum(chunk_start)[literal] - 1
    out[chunk_at[chunk_of] + 1 + (literal - chunk_starts[chunk_of])] = rows[literal]
    return out


def _rle_decode(
    data: bytes, pos: int, height: int, width: int, name: str | None
) -> tuple[np.ndarray, int]:
    """RGBE quadruples of the leading run-length encoded scanlines, and where they end.

    Stops at the first scanline without the new-style marker; as in ``rgbe.c``, the rest of
    the file is then flat. The chunk boundaries are found in Python (each count byte says
    where the next one is), the bytes themselves are moved by numpy, a block at a time.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    marker = bytes((2, 2, width >> 8, width & 0xFF))
    blocks: list[np.ndarray] = []
    scanline = 0
    while scanline < height:
        positions: list[int] = []
        first = scanline
        while scanline < height and scanline - first < _BLOCK_SCANLINES:
            if data[pos : pos + 4] != marker:
                break
            pos += 4
            for _channel in range(4):
                filled = 0
                while filled < width:
                    if pos >= len(data):
                        raise UnsupportedImage(f"{label(name)}truncated Radiance file")
                    code = data[pos]
                    positions.append(pos)
                    if code > 128:
                        filled += code - 128
                        pos += 2
                    elif code == 0:
                        raise UnsupportedImage(
                            f"{label(name)}corrupt run-length data (empty chunk)"
                        )
                    else:
                        filled += code
                        pos += 1 + code
                if filled != width:
                    raise UnsupportedImage(
                        f"{label(name)}corrupt run-length data (scanline {scanline} overruns "
                        f"its width {width})"
                    )
                if pos > len(data):
                    raise UnsupportedImage(f"{label(name)}truncated Radiance file")
            scanline += 1
        if scanline == first:
            break  # a flat scanline: the rest of the file is flat
        starts = np.asarray(positions, dtype=np.int64)
        codes = buffer[starts].astype(np.int64)
        is_run = codes > 128
        lengths = np.where(is_run, codes - 128, codes)
        total = int(lengths.sum())
        offset = np.arange(total, dtype=np.int64) - np.repeat(_exclusive_cumsum(lengths), lengths)
        source = np.repeat(starts + 1, lengths) + offset * np.repeat(~is_run, lengths)
        block = buffer[source].reshape(scanline - first, 4, width).transpose(0, 2, 1)
        blocks.append(block)
    if not blocks:
        return np.empty((0, width, 4), dtype=np.uint8), pos
    return np.concatenate(blocks, axis=0), pos


# -- files ------------------------------------------------------------------------------------


def encode_radiance(hdr: np.ndarray) -> bytes:
    """A Radiance ``.hdr`` file of an H x W x 3 linear image (``-Y H +X W``, RLE scanlines).

    Negative and NaN values become 0 (RGBE cannot hold them); values past about 1.7e38
    are clamped. Images narrower than 8 or wider than 32767 pixels are written flat, as
    the format requires.
    """
    if hdr.ndim != 3 or hdr.shape[2] != 3 or hdr.shape[0] == 0 or hdr.shape[1] == 0:
        raise ValueError(f"expected a non-empty H x W x 3 image, got shape {hdr.shape}")
    height, width, _ = hdr.shape
    header = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {height} +X {width}\n".encode("ascii")
    parts = [header]
    for top in range(0, height, _BLOCK_SCANLINES):
        rgbe = _to_rgbe(hdr[top : top + _BLOCK_SCANLINES])
        if _MIN_RLE_WIDTH <= width <= _MAX_RLE_WIDTH:
            parts.append(_rle_block(rgbe).tobytes())
        else:
            parts.append(rgbe.tobytes())
    return b"".join(parts)


def _read_header(data: bytes, name: str | None) -> tuple[int, tuple[bytes, ...]]:
    """Where the pixels start and the resolution line's six fields."""
    if not data.startswith(b"#?"):
        raise UnsupportedImage(f"{label(name)}not a Radiance file (no '#?' signature)")
    end = data.find(b"\n\n")
    if end < 0:
        raise UnsupportedImage(f"{label(name)}truncated Radiance header")
    for line in data[:end].split(b"\n")[1:]:
        line = line.strip()
        if line.startswith(b"FORMAT=") and line != b"FORMAT=32-bit_rle_rgbe":
            what = line[len(b"FORMAT=") :].decode("ascii", "replace")
            raise UnsupportedImage(f"{label(name)}Radiance format {what}; expected 32-bit_rle_rgbe")
    line_end = data.find(b"\n", end + 2)
    if line_end < 0:
        raise UnsupportedImage(f"{label(name)}truncated Radiance header (no resolution line)")
    match = _RESOLUTION.match(data[end + 2 : line_end].strip())
    if not match or match.group(2) == match.group(5):
        raise UnsupportedImage(f"{label(name)}unreadable Radiance resolution line")
    return line_end + 1, match.groups()


def decode_radiance(data: bytes, name: str | None = None) -> np.ndarray:
    """H x W x 3 float32 of a Radiance RGBE file, flat or new-style run-length encoded.

    Header variables such as ``EXPOSURE`` are ignored, as OpenCV and imageio ignore them;
    all eight scanline orientations are honoured. Old-style (1, 1, 1, n) repeat pixels,
    obsolete since 1991, are not expanded.
    """
    pos, (sign1, axis1, size1, sign2, axis2, size2) = _read_header(data, name)
    rows, columns = int(size1), int(size2)  # in file order: `rows` scanlines of `columns`
    if rows == 0 or columns == 0:
        raise UnsupportedImage(f"{label(name)}empty Radiance image")

    if _MIN_RLE_WIDTH <= columns <= _MAX_RLE_WIDTH:
        encoded, pos = _rle_decode(data, pos, rows, columns, name)
    else:
        encoded = np.empty((0, columns, 4), dtype=np.uint8)
    flat_rows = rows - encoded.shape[0]
    if flat_rows:
        needed = flat_rows * columns * 4
        if len(data) - pos < needed:
            raise UnsupportedImage(f"{label(name)}truncated Radiance file")
        flat = np.frombuffer(data, dtype=np.uint8, count=needed, offset=pos)
        encoded = np.concatenate([encoded, flat.reshape(flat_rows, columns, 4)], axis=0)

    rgb = _from_rgbe(encoded)
    # -Y: scanlines run top to bottom; +X: pixels run left to right. Anything else flips.
    if (axis1 == b"Y") == (sign1 == b"+"):
        rgb = rgb[::-1]
    if (axis2 == b"X") == (sign2 == b"-"):
        rgb = rgb[:, ::-1]
    if axis1 == b"X":
        rgb = rgb.transpose(1, 0, 2)
    return np.ascontiguousarray(rgb)
