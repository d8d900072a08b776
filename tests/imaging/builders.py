"""Test images built byte by byte or with independent writers, never with the code under test.

PNGs are assembled here from zlib and struct (filter type 0, no libpng), so a 16-bit
round trip checks the decoder against the PNG specification rather than against the
encoder of the same library it decodes with.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable

import numpy as np
import pillow_heif
import tifffile
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> colour type


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_ihdr(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    return png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    )


def png_bytes(
    pixels: np.ndarray,
    extra_chunks: Iterable[tuple[bytes, bytes]] = (),
    palette: bytes | None = None,
) -> bytes:
    """A PNG of ``pixels`` (H x W [x C], uint8 or uint16), written from the specification.

    With ``palette`` (PLTE payload), ``pixels`` (H x W uint8) are palette indices.
    ``extra_chunks`` go between IHDR and IDAT.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    colour_type = 3 if palette is not None else _PNG_COLOUR_TYPE[channels]
    rows = pixels.astype(">u2" if bit_depth == 16 else "u1").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    chunks = [png_ihdr(width, height, bit_depth, colour_type)]
    chunks += [png_chunk(kind, payload) for kind, payload in extra_chunks]
    if palette is not None:
        chunks.append(png_chunk(b"PLTE", palette))
    chunks.append(png_chunk(b"IDAT", zlib.compress(raw)))
    chunks.append(png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def png_interlaced_bytes(pixels: np.ndarray) -> bytes:
    """An Adam7-interlaced RGB PNG of ``pixels`` (H x W x 3, uint8 or uint16), filter 0.

    Each of the seven passes is the sub-image ``pixels[y0::dy, x0::dx]`` of the
    specification's table, its rows concatenated pass after pass in one deflate stream.
    """
    height, width, _ = pixels.shape
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    raw = b""
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        sub = pixels[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        rows = sub.astype(">u2" if bit_depth == 16 else "u1").reshape(sub.shape[0], -1)
        rows = rows.view(np.uint8)
        raw += np.concatenate([np.zeros((sub.shape[0], 1), np.uint8), rows], axis=1).tobytes()
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 1))
    idat = png_chunk(b"IDAT", zlib.compress(raw))
    return PNG_SIGNATURE + ihdr + idat + png_chunk(b"IEND", b"")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few dozen bytes whose header declares ``width x height`` 8-bit RGB pixels."""
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return PNG_SIGNATURE + png_ihdr(width, height, 8, 2) + idat + png_chunk(b"IEND", b"")


def pillow_bytes(pixels: np.ndarray, fmt: str, mode: str | None = None, **params: object) -> bytes:
    """``pixels`` saved by Pillow in ``fmt`` (JPEG for instance), converted to ``mode`` first."""
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    stream = io.BytesIO()
    image.save(stream, format=fmt, **params)
    return stream.getvalue()


def tiff_bytes(pixels: np.ndarray, **params: object) -> bytes:
    """``pixels`` written by tifffile (``photometric``, ``compression``... passed through)."""
    stream = io.BytesIO()
    tifffile.imwrite(stream, pixels, **params)
    return stream.getvalue()


def heic_bytes(
    pixels: np.ndarray,
    bits: int = 8,
    exif: bytes | None = None,
    lossless: bool = True,
    **params: object,
) -> bytes:
    """``pixels`` encoded to HEIC by libheif's x265 encoder (through pillow-heif).

    ``pixels`` are H x W x 3 (or 4 for RGBA, H x W for grayscale): uint8 for ``bits=8``,
    uint16 holding ``bits``-bit values (0..1023 for 10 bits) otherwise. ``lossless`` codes
    4:4:4 with the identity matrix, so a decoder must return ``pixels`` exactly; ``params``
    go to ``save`` (``quality``, ``tile_size`` for an iPhone-style grid, ...). 12 bits need
    ``pillow_heif.options.SAVE_HDR_TO_12_BIT`` set by the caller.
    """
    modes = {2: "L", 3: "RGB", 4: "RGBA"}
    mode = modes[pixels.ndim if pixels.ndim == 2 else pixels.shape[2]]
    if bits > 8:  # pillow-heif takes 16-bit samples and keeps their top ``bits`` bits
        mode += ";16"
        pixels = pixels.astype(np.uint16) << (16 - bits)
    height, width = pixels.shape[:2]
    heif = pillow_heif.from_bytes(mode=mode, size=(width, height), data=pixels.tobytes())
    if lossless:
        params = {"quality": -1, "chroma": 444, "matrix_coefficients": 0, **params}
    if exif is not None:
        params["exif"] = exif
    stream = io.BytesIO()
    heif.save(stream, **params)
    return stream.getvalue()


def patch_heif_extents(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a HEIF file) with every ``ispe`` property declaring ``width x height``."""
    out = bytearray(data)
    at = out.find(b"ispe")
    assert at > 0, "no ispe property"
    while at > 0:
        struct.pack_into(">II", out, at + 8, width, height)  # after type, version, flags
        at = out.find(b"ispe", at + 4)
    return bytes(out)


def _ue(value: int) -> str:
    """``value`` as an unsigned exp-Golomb code, in '0'/'1' characters."""
    code = f"{value + 1:b}"
    return "0" * (len(code) - 1) + code


def _escaped(rbsp: bytes) -> bytes:
    """An RBSP with emulation-prevention bytes: ``03`` after ``00 00`` before a byte <= 3."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _nal_bytes(header: bytes, bits: str) -> bytes:
    """A NAL unit from its 2-byte header and RBSP bits: stop bit, byte alignment, escaping."""
    bits += "1"
    bits += "0" * (-len(bits) % 8)
    return header + _escaped(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def hevc_sps(
    width: int,
    height: int,
    chroma_format_idc: int = 1,
    sub_layers: Iterable[tuple[bool, bool]] = (),
    window: tuple[int, int, int, int] | None = None,
) -> bytes:
    """The start of an HEVC SPS NAL unit (H.265 7.3.2.2) up to its conformance window.

    ``sub_layers`` gives (profile present, level present) for each sub-layer beyond the
    first; the profile fields are all zeros, so the bytes need emulation prevention.
    ``window`` is the (left, right, top, bottom) conformance window in chroma units.
    """
    present = list(sub_layers)
    bits = "0000" + f"{len(present):03b}" + "1"  # VPS id 0, max_sub_layers_minus1, nesting
    bits += "0" * 88 + f"{93:08b}"  # general profile, flags: zeros; level 3.1
    bits += "".join(f"{int(p)}{int(lv)}" for p, lv in present)
    if present:
        bits += "00" * (8 - len(present))
    for profile, level in present:
        bits += "0" * 88 * profile + f"{93:08b}" * level
    bits += _ue(0) + _ue(chroma_format_idc) + ("0" if chroma_format_idc == 3 else "")
    bits += _ue(width) + _ue(height)
    bits += "0" if window is None else "1" + "".join(_ue(v) for v in window)
    return _nal_bytes(b"\x42\x01", bits)


def _respelled_sps(nal: bytes, width: int, height: int) -> bytes:
    """An SPS NAL unit of a single-layer stream with its picture size replaced, every
    other field kept: unescaped, re-encoded bit by bit, escaped again."""
    rbsp = bytearray()
    zeros = 0
    for byte in nal[2:]:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        rbsp.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    bits = "".join(f"{byte:08b}" for byte in rbsp).rstrip("0")[:-1]  # drop the stop bit
    assert bits[4:7] == "000", "only single-layer SPSs are respelled"
    pos = 8 + 96

    def skip_ue() -> int:
        nonlocal pos
        zeros = bits.index("1", pos) - pos
        start, pos = pos, pos + 2 * zeros + 1
        return int(bits[start + zeros : pos], 2) - 1

    skip_ue()  # sps_seq_parameter_set_id
    if skip_ue() == 3:  # chroma_format_idc, then separate_colour_plane_flag
        pos += 1
    start = pos
    skip_ue(), skip_ue()
    return _nal_bytes(nal[:2], bits[:start] + _ue(width) + _ue(height) + bits[pos:])


def _hvcc_with_sps_size(record: bytes, width: int, height: int) -> bytes:
    """An ``hvcC`` payload with every SPS respelled to declare ``width x height``."""
    out, pos = bytearray(record[:23]), 23
    for _ in range(record[22]):
        kind, count = record[pos], int.from_bytes(record[pos + 1 : pos + 3], "big")
        out += record[pos : pos + 3]
        pos += 3
        for _ in range(count):
            length = int.from_bytes(record[pos : pos + 2], "big")
            nal = record[pos + 2 : pos + 2 + length]
            if kind & 0x3F == 33:
                nal = _respelled_sps(nal, width, height)
            out += len(nal).to_bytes(2, "big") + nal
            pos += 2 + length
    return bytes(out)


def _rebuilt_boxes(data: bytes, start: int, end: int, edit: Callable[[bytes], bytes]) -> bytes:
    """The boxes of ``data[start:end]`` (32-bit sizes), each ``hvcC`` payload passed through
    ``edit`` and the containers on the way (``meta``, ``iprp``, ``ipco``) re-sized."""
    out = bytearray()
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        payload = data[start + 8 : start + size]
        if kind == b"meta":
            payload = payload[:4] + _rebuilt_boxes(data, start + 12, start + size, edit)
        elif kind in (b"iprp", b"ipco"):
            payload = _rebuilt_boxes(data, start + 8, start + size, edit)
        elif kind == b"hvcC":
            payload = edit(payload)
        out += struct.pack(">I4s", 8 + len(payload), kind) + payload
        start += size
    return bytes(out)


def _shift_iloc(data: bytearray, after: int, delta: int) -> None:
    """Move every file-offset extent in ``iloc`` that lies past ``after`` by ``delta``."""
    at = data.index(b"iloc") + 4
    version = data[at]
    offset_size, length_size = data[at + 4] >> 4, data[at + 4] & 15
    base_size, index_size = data[at + 5] >> 4, data[at + 5] & 15
    pos = at + 6
    id_size = 2 if version < 2 else 4
    count = int.from_bytes(data[pos : pos + id_size], "big")
    pos += id_size
    for _ in range(count):
        pos += id_size
        method = 0
        if version in (1, 2):
            method = int.from_bytes(data[pos : pos + 2], "big") & 15
            pos += 2
        pos += 2  # data_reference_index
        base = int.from_bytes(data[pos : pos + base_size], "big")
        base_at, pos = pos, pos + base_size
        extents = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        for _ in range(extents):
            pos += index_size if version in (1, 2) else 0
            offset = int.from_bytes(data[pos : pos + offset_size], "big")
            if method == 0 and base == 0 and offset > after:
                data[pos : pos + offset_size] = (offset + delta).to_bytes(offset_size, "big")
            pos += offset_size + length_size
        if method == 0 and base > after:
            data[base_at : base_at + base_size] = (base + delta).to_bytes(base_size, "big")


def patch_heif_sps(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a HEIF file from :func:`heic_bytes`) with every HEVC SPS (in the ``hvcC``
    properties) declaring a ``width x height`` coded picture and every ``ispe`` unchanged;
    the boxes around grow or shrink with it and ``iloc`` follows ``mdat``."""
    at = data.index(b"meta") - 4
    size = int.from_bytes(data[at : at + 4], "big")
    meta = _rebuilt_boxes(
        data, at, at + size, lambda hvcc: _hvcc_with_sps_size(hvcc, width, height)
    )
    out = bytearray(data[:at] + meta + data[at + size :])
    _shift_iloc(out, at, len(meta) - size)
    return bytes(out)


def exif_blob(
    exposure_time: tuple[int, int] | None = (1, 100),
    f_number: tuple[int, int] | None = (28, 10),
    iso: int | None = 200,
    iso_speed: int | None = None,
    byteorder: str = "<",
    header: bool = False,
) -> bytes:
    """A TIFF-structured EXIF block: IFD0 holding only the pointer to an EXIF IFD.

    ``header`` prepends JPEG's ``Exif\\0\\0``.
    """
    entries: list[tuple[int, int, int, bytes]] = []  # tag, type, count, value bytes
    if exposure_time is not None:
        entries.append((0x829A, 5, 1, struct.pack(byteorder + "II", *exposure_time)))
    if f_number is not None:
        entries.append((0x829D, 5, 1, struct.pack(byteorder + "II", *f_number)))
    if iso is not None:
        entries.append((0x8827, 3, 1, struct.pack(byteorder + "H", iso) + b"\x00\x00"))
    if iso_speed is not None:
        entries.append((0x8833, 4, 1, struct.pack(byteorder + "I", iso_speed)))

    mark = b"II" if byteorder == "<" else b"MM"
    head = mark + struct.pack(byteorder + "HI", 42, 8)
    ifd0 = struct.pack(byteorder + "H", 1)
    exif_ifd_at = 8 + 2 + 12 + 4
    ifd0 += struct.pack(byteorder + "HHII", 0x8769, 4, 1, exif_ifd_at) + struct.pack(
        byteorder + "I", 0
    )
    values_at = exif_ifd_at + 2 + 12 * len(entries) + 4
    table = struct.pack(byteorder + "H", len(entries))
    values = b""
    for tag, ftype, count, value in entries:
        if len(value) > 4:
            table += struct.pack(byteorder + "HHII", tag, ftype, count, values_at + len(values))
            values += value
        else:
            table += struct.pack(byteorder + "HHI", tag, ftype, count) + value.ljust(4, b"\x00")
    table += struct.pack(byteorder + "I", 0)
    blob = head + ifd0 + table + values
    return (b"Exif\x00\x00" + blob) if header else blob


def tiff_with_exif_ifd(pixels: np.ndarray, blob: bytes) -> bytes:
    """A tifffile-written RGB TIFF whose IFD0 points at the EXIF IFD of ``blob``.

    tifffile cannot write an EXIF IFD itself: the file is written with a placeholder tag,
    ``blob``'s EXIF IFD is appended (offsets rebased) and the placeholder turned into an
    ExifIFD pointer to it. ``blob`` must be little-endian, as tifffile writes.
    """
    placeholder = 65000  # a private tag: tifffile refuses to write ExifIFD (34665) itself
    data = bytearray(
        tiff_bytes(pixels, photometric="rgb", extratags=[(placeholder, 4, 1, 0, True)])
    )
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages[0].tags[placeholder]
        entry_at, pointer_at = tag.offset, tag.valueoffset
    struct.pack_into("<H", data, entry_at, 0x8769)
    (exif_ifd_at,) = struct.unpack_from("<I", blob, 8 + 2 + 8)
    base = len(data) + (len(data) % 2)
    data += b"\x00" * (base - len(data))
    shift = base - exif_ifd_at
    ifd = bytearray(blob[exif_ifd_at:])
    (count,) = struct.unpack_from("<H", ifd, 0)
    for i in range(count):
        entry = 2 + 12 * i
        _tag, ftype, n = struct.unpack_from("<HHI", ifd, entry)
        if ftype in (5, 10) or (ftype == 4 and n > 1):  # the value is an offset: rebase it
            (offset,) = struct.unpack_from("<I", ifd, entry + 8)
            struct.pack_into("<I", ifd, entry + 8, offset + shift)
    data += ifd
    struct.pack_into("<I", data, pointer_at, base)
    return bytes(data)


def patch_tiff_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a little-endian classic TIFF) with ImageWidth/ImageLength rewritten."""
    out = bytearray(data)
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        (tag,) = struct.unpack_from("<H", out, entry)
        if tag in (256, 257):
            struct.pack_into("<HII", out, entry + 2, 4, 1, width if tag == 256 else height)
    return bytes(out)


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG) with its SOF0 frame size rewritten."""
    out = bytearray(data)
    at = out.index(b"\xff\xc0")
    struct.pack_into(">HH", out, at + 5, height, width)
    return bytes(out)
