"""HEIF/HEIC (what iPhones write): header facts from the container, pixels from libheif.

The pixels come from libheif through ``pillow_heif``, used directly rather than as a Pillow
plugin: registering the plugin changes Pillow for the whole process, and Pillow's own path
reduces 10-bit images to 8 bits. ``pillow_heif.open_heif`` parses the container only and
decodes nothing until the pixels are asked for, so the header is read without allocating
the frame.

Before libheif sees the bytes, the top-level boxes are walked by their lengths: a file cut
off anywhere (an interrupted upload usually loses the end of ``mdat``, which libheif would
only notice while decoding, on the worker) is refused at admission.

The same walk measures what decoding will cost, since the pixel limit must hold for what
libheif allocates, not for what the container claims. Each ``ispe`` (image spatial extent)
property is only a claim; the HEVC decoder allocates the picture its sequence parameter set
(SPS) codes, ``pic_width/height_in_luma_samples``, before any crop (conformance window,
``clap``, the grid's output size). SPSs are read from every ``hvcC`` property and from the
primary image's coded data too: libheif hands the decoder the ``hvcC`` NAL units followed by
the item's own, and an SPS among those replaces the one ``hvcC`` declared. What counts
against ``HDR_MAX_PIXELS`` (as ``coded_pixels``; 413 when over) is the largest of:

- every ``ispe`` and every ``hvcC`` SPS in the file (thumbnails included), and every SPS
  in the primary image's coded data: no single coded picture may exceed the limit;
- the sum, over the coded pictures the primary image is made of (itself, or each tile of
  its grid, counted as often as the grid lists it), of the largest SPS of each: a grid of
  tiles each under the limit, or one tile listed thousands of times, is a bomb too.

A tile whose SPS is far larger than its ``ispe`` thus costs its coded size, not its claim.
A real grid costs a little more than its output size (an iPhone's 4032 x 3024 is 48 tiles of
512 x 512: 12.6 MP). Hostile bytes cost no more than real ones: SPS fields are read by a
bit reader that refuses to run off the end, exp-Golomb codes are at most 32 bits, and box,
association, extent, parameter-set and NAL-unit counts are all bounded; anything malformed
is :class:`UnsupportedImage` (415) saying what.

HEIF's own transforms (``irot`` rotation, ``imir`` mirror, ``clap`` crop) are part of the
image the container defines and libheif applies them; the reported size is the size after
them. EXIF Orientation is not applied, as for every other format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pillow_heif

from service.errors import IncompleteImage, UnsupportedImage
from service.imaging.exif import parse_exif
from service.imaging.formats import ImageFormat, ImageInfo, check_decoded, iso_brands, label

#: Brands that promise still images (items), HEVC- or AV1-coded.
_STILL_BRANDS = frozenset({b"mif1", b"heic", b"heix", b"heim", b"heis", b"avif"})
#: Brands of HEVC coding: HEIC stills and HEVC sequences.
_HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AV1_BRANDS = frozenset({b"avif", b"avis"})

#: Bits per sample accepted; 10 and 12 are widened to 16 on decode.
BIT_DEPTHS = (8, 10, 12)

#: pillow_heif mode (before any ``;bits`` suffix) -> (channels, what it is), for refusals.
_OTHER_MODES: dict[str, tuple[int, str]] = {
    "RGBA": (4, "RGBA"),
    "BGRA": (4, "RGBA"),
    "LA": (2, "grayscale+alpha"),
    "L": (1, "grayscale"),
    "I": (1, "grayscale"),
}

_FULL_BOX_HEADER = 4  # version (1 byte) and flags (3 bytes) of a FullBox
#: Boxes one container may hold before the file counts as hostile: real files have a
#: handful at the top level and a few dozen properties (an iPhone grid shares them), while
#: 64 MiB of empty 8-byte boxes would keep the API's walk busy for seconds.
MAX_BOXES = 10_000
#: Parameter sets one ``hvcC`` may carry: a real one holds one VPS, one SPS and one PPS.
MAX_PARAMETER_SETS = 16
#: Bytes of an SPS that are read: the fields up to the conformance window lie in the first
#: ~100 even with seven sub-layers, so a 64 KiB NAL costs no more than a real one.
_SPS_PREFIX = 256
_NAL_SPS = 33  # HEVC nal_unit_type of a sequence parameter set
#: NAL units of the primary image's coded data walked in all, looking for SPSs: a real
#: file has a few per tile, a hostile one could hold millions of empty ones.
MAX_NAL_UNITS = 100_000
#: Image items derived from derived items: an iPhone's is 1 deep (a grid of coded tiles).
MAX_DERIVATION_DEPTH = 8


@dataclass(frozen=True)
class SpsSize:
    """The picture size an HEVC sequence parameter set declares.

    ``width x height`` (``pic_width/height_in_luma_samples``) is what the decoder allocates
    and decodes; the ``cropped_*`` size is what remains after the conformance window, the
    picture the decoder outputs.
    """

    width: int
    height: int
    cropped_width: int
    cropped_height: int

    @property
    def pixels(self) -> int:
        """The coded area, the number the pixel limit is checked against."""
        return self.width * self.height


class _Bits:
    """A big-endian bit reader over an RBSP that raises :class:`ValueError` at its end."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._size = len(data) * 8
        self._pos = 0

    def u(self, count: int) -> int:
        """The next ``count`` bits as an unsigned integer."""
        if self._pos + count > self._size:
            raise ValueError("the SPS ends in the middle of its picture size fields")
        self._pos += count
        return (self._value >> (self._size - self._pos)) & ((1 << count) - 1)

    def ue(self) -> int:
        """The next unsigned exp-Golomb code: n zeros, a one, n more bits (n <= 32)."""
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 32:
                raise ValueError("an exp-Golomb code in the SPS is longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)


def _unescape(nal: bytes) -> bytes:
    """``nal`` without its emulation-prevention bytes (``00 00 03`` -> ``00 00``)."""
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _skip_profile_tier_level(bits: _Bits, max_sub_layers_minus1: int) -> None:
    """Read past ``profile_tier_level(1, max_sub_layers_minus1)`` (H.265 7.3.3)."""
    bits.u(96)  # general profile (8), compatibility flags (32), constraint flags (48), level (8)
    present = [(bits.u(1), bits.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        bits.u(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits up to 8 sub-layers
    for profile_present, level_present in present:
        bits.u(88 * profile_present + 8 * level_present)


def parse_sps(nal: bytes) -> SpsSize:
    """The picture size of an HEVC SPS NAL unit (with its 2-byte header, still escaped).

    Raises :class:`ValueError` saying what is wrong for anything but a well-formed start of
    an SPS; reads at most :data:`_SPS_PREFIX` bytes however long ``nal`` is.
    """
    if len(nal) < 2 or _nal_type(nal) != _NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    bits = _Bits(_unescape(nal[:_SPS_PREFIX])[2:])
    bits.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    if max_sub_layers_minus1 > 6:
        raise ValueError(f"sps_max_sub_layers_minus1 is {max_sub_layers_minus1}, over 6")
    bits.u(1)  # sps_temporal_id_nesting_flag
    _skip_profile_tier_level(bits, max_sub_layers_minus1)
    if bits.ue() > 15:
        raise ValueError("sps_seq_parameter_set_id is over 15")
    chroma_format_idc = bits.ue()
    if chroma_format_idc > 3:
        raise ValueError(f"chroma_format_idc is {chroma_format_idc}, over 3")
    separate_planes = chroma_format_idc == 3 and bits.u(1)
    width, height = bits.ue(), bits.ue()
    if not width or not height:
        raise ValueError(f"the SPS declares a {width}x{height} picture")
    left = right = top = bottom = 0
    if bits.u(1):  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    # Offsets count chroma samples: two luma samples wide (4:2:0, 4:2:2) and high (4:2:0).
    sub_width = 2 if chroma_format_idc in (1, 2) and not separate_planes else 1
    sub_height = 2 if chroma_format_idc == 1 and not separate_planes else 1
    cropped_width = width - sub_width * (left + right)
    cropped_height = height - sub_height * (top + bottom)
    if cropped_width <= 0 or cropped_height <= 0:
        raise ValueError(f"the conformance window crops all of the {width}x{height} picture")
    return SpsSize(width, height, cropped_width, cropped_height)


def _nal_type(nal: bytes) -> int:
    """An HEVC NAL unit's ``nal_unit_type``, from the first byte of its header."""
    return (nal[0] >> 1) & 0x3F if nal else -1


def hvcc_sps_sizes(record: bytes) -> tuple[SpsSize, ...]:
    """The sizes the SPSs in an ``hvcC`` payload (HEVCDecoderConfigurationRecord, ISO/IEC
    14496-15 8.3.3) declare; :class:`ValueError` for a record cut short or holding no SPS.

    A NAL unit counts as an SPS by its own header, whatever the array it is filed under
    says: the decoder is handed every NAL unit of every array and goes by the header.
    """
    if len(record) < 23:
        raise ValueError(f"hvcC is {len(record)} bytes, shorter than its 23-byte header")
    pos, sizes, nal_units = 23, [], 0
    for _ in range(record[22]):  # numOfArrays
        if pos + 3 > len(record):
            raise ValueError("hvcC ends inside its NAL unit arrays")
        count = int.from_bytes(record[pos + 1 : pos + 3], "big")
        pos += 3
        nal_units += count
        if nal_units > MAX_PARAMETER_SETS:
            raise ValueError(f"hvcC holds more than {MAX_PARAMETER_SETS} parameter sets")
        for _ in range(count):
            length = int.from_bytes(record[pos : pos + 2], "big")
            if pos + 2 + length > len(record):
                raise ValueError("hvcC ends inside a NAL unit")
            nal = record[pos + 2 : pos + 2 + length]
            if _nal_type(nal) == _NAL_SPS:
                sizes.append(parse_sps(nal))
            pos += 2 + length
    if not sizes:
        raise ValueError("hvcC holds no SPS (sequence parameter set)")
    return tuple(sizes)


def _boxes(data: bytes, start: int, end: int, name: str | None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``.

    Raises :class:`UnsupportedImage` for a box that runs past ``end`` or a box header cut
    short, which is what a truncated upload looks like.
    """
    pos = start
    for _ in range(MAX_BOXES):
        if pos >= end:
            return
        if pos + 8 > end:
            raise UnsupportedImage(f"{label(name)}truncated HEIF: a box header is cut short")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > end:
                raise UnsupportedImage(f"{label(name)}truncated HEIF: a box header is cut short")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # the box extends to the end of its container
            size = end - pos
        if size < header:
            raise UnsupportedImage(
                f"{label(name)}corrupt HEIF: box {kind.decode('latin-1')!r} has size {size}"
            )
        if pos + size > end:
            where = "the file" if end == len(data) else "its parent box"
            raise UnsupportedImage(
                f"{label(name)}truncated HEIF: box {kind.decode('latin-1')!r} runs "
                f"{pos + size - end} bytes past the end of {where}"
            )
        yield kind, pos + header, pos + size
        pos += size
    if pos < end:
        raise UnsupportedImage(
            f"{label(name)}corrupt HEIF: more than {MAX_BOXES} boxes in one container"
        )


def _children(boxes: Iterator[tuple[bytes, int, int]], kind: bytes) -> Iterator[tuple[int, int]]:
    """(payload start, end) of each box of type ``kind`` among ``boxes``."""
    for found, start, end in boxes:
        if found == kind:
            yield start, end


@dataclass(frozen=True)
class _Location:
    """Where ``iloc`` says an item's data lies: construction method 0 (file offsets) or 1
    (offsets into ``idat``), and (offset, length) extents, a length of 0 meaning "to the
    end"; libheif decodes the concatenation of the extents."""

    method: int
    extents: tuple[tuple[int, int], ...]


@dataclass
class _Meta:
    """What one ``meta`` box says about coded sizes, read without decoding anything."""

    extents: dict[int, tuple[int, int]] = field(default_factory=dict)
    """property index (1-based, as ``ipma`` counts them) -> ``ispe`` width and height."""
    pictures: dict[int, tuple[SpsSize, ...]] = field(default_factory=dict)
    """property index -> the sizes of the SPSs in that ``hvcC``."""
    properties: dict[int, list[int]] = field(default_factory=dict)
    """item ID -> the property indices ``ipma`` associates with it."""
    derived: dict[int, list[int]] = field(default_factory=dict)
    """item ID -> the items it is derived from (``dimg``: a grid's tiles)."""
    locations: dict[int, list[_Location]] = field(default_factory=dict)
    idat: tuple[int, int] = (0, 0)
    """(start, end) of the ``idat`` payload, what construction method 1 counts from."""
    primary: int | None = None

    def coded_pixels(self, data: bytes, name: str | None) -> int:
        """The pixel count to check against the limit; the rule is in the module doc."""
        largest = max((width * height for width, height in self.extents.values()), default=0)
        for declared in self.pictures.values():
            largest = max(largest, *(size.pixels for size in declared))
        if self.primary is None:
            return largest
        own: dict[int, int] = {}
        decoded = self._decoded_pixels(self.primary, 0, own, {}, _NalWalk(data, name))
        return max(largest, *own.values(), decoded)

    def _decoded_pixels(
        self, item: int, depth: int, own: dict[int, int], memo: dict[int, int], walk: _NalWalk
    ) -> int:
        """The coded pixels decoded for ``item``: its own largest SPS (from ``hvcC`` or its
        coded data; ``own`` collects them) plus, once per reference, those of the items it
        is derived from: a grid decodes a tile as often as it lists it."""
        if item in memo:
            return memo[item]
        if depth > MAX_DERIVATION_DEPTH:
            raise UnsupportedImage(
                f"{label(walk.name)}corrupt HEIF: image items derived from others more than "
                f"{MAX_DERIVATION_DEPTH} deep"
            )
        memo[item] = 0  # a reference cycle counts once: libheif refuses to decode it
        sizes = [s for i in self.properties.get(item, ()) for s in self.pictures.get(i, ())]
        if sizes:  # a grid or an identity transform has no HEVC data of its own
            for location in self.locations.get(item, ()):
                sizes.extend(walk.sps_sizes(self._item_data(walk.data, location)))
            own[item] = max(size.pixels for size in sizes)
        memo[item] = own.get(item, 0) + sum(
            self._decoded_pixels(source, depth + 1, own, memo, walk)
            for source in self.derived.get(item, ())
        )
        return memo[item]

    def _item_data(self, data: bytes, location: _Location) -> list[tuple[int, int]]:
        """(start, end) in ``data`` of each extent of ``location``; none when an extent lies
        outside its source, as libheif then refuses the item before decoding any of it."""
        if location.method == 0:
            start, end = 0, len(data)
        elif location.method == 1:
            start, end = self.idat
        else:  # construction method 2 (offsets into another item): libheif decodes none
            return []
        spans = []
        for offset, length in location.extents:
            begin = start + offset
            stop = end if length == 0 else begin + length
            if begin > end or stop > end:
                return []
            spans.append((begin, stop))
        return spans


class _NalWalk:
    """Finds SPSs in items' coded data, as libheif hands it to the decoder after the
    ``hvcC`` parameter sets: NAL units each behind a 4-byte length (libheif reads 4 bytes
    whatever ``hvcC`` says). A length running past the data ends the walk: libheif refuses
    such an item before decoding it. Bounded in bytes (the file's size: real items do not
    share data) and in NAL units, so a hostile file costs no more than a real one."""

    def __init__(self, data: bytes, name: str | None) -> None:
        self.data = data
        self.name = name
        self._bytes = len(data)
        self._nal_units = MAX_NAL_UNITS

    def sps_sizes(self, spans: list[tuple[int, int]]) -> list[SpsSize]:
        """The sizes of the SPSs in the concatenation of ``data[start:end]`` for ``spans``."""
        where = label(self.name)
        self._bytes -= sum(end - start for start, end in spans)
        if self._bytes < 0:
            raise UnsupportedImage(
                f"{where}corrupt HEIF: the primary image's coded data adds up to more than the file"
            )
        coded = b"".join(self.data[start:end] for start, end in spans)
        sizes, pos = [], 0
        while pos + 4 <= len(coded):
            self._nal_units -= 1
            if self._nal_units < 0:
                raise UnsupportedImage(
                    f"{where}corrupt HEIF: more than {MAX_NAL_UNITS} NAL units in the "
                    "primary image's coded data"
                )
            length = int.from_bytes(coded[pos : pos + 4], "big")
            pos += 4
            if length > len(coded) - pos:
                break
            if length and _nal_type(coded[pos : pos + 1]) == _NAL_SPS:
                try:
                    sizes.append(parse_sps(coded[pos : pos + min(length, _SPS_PREFIX)]))
                except ValueError as exc:
                    raise UnsupportedImage(f"{where}corrupt HEIF: {exc}") from None
            pos += length
        return sizes


def _uint(data: bytes, pos: int, size: int) -> int:
    """The ``size``-byte big-endian unsigned integer at ``pos`` (0 for size 0)."""
    return int.from_bytes(data[pos : pos + size], "big")


def _item_id_size(version: int) -> int:
    """Item IDs (and counts of them) are 16 bits in version 0 boxes, 32 bits from 1."""
    return 2 if version == 0 else 4


def _read_ipma(data: bytes, start: int, end: int, meta: _Meta, name: str | None) -> None:
    """Item -> property associations (ISO/IEC 23008-12 9.3.3) into ``meta.properties``."""
    corrupt = UnsupportedImage(f"{label(name)}corrupt HEIF: ipma property associations cut short")
    if end - start < _FULL_BOX_HEADER + 4:
        raise corrupt
    version, flags = data[start], data[start + 3]
    count = _uint(data, start + 4, 4)
    if count > MAX_BOXES:
        raise UnsupportedImage(f"{label(name)}corrupt HEIF: ipma lists {count} items")
    pos, id_size = start + 8, _item_id_size(version)
    wide = flags & 1  # 15-bit property indices instead of 7-bit ones
    for _ in range(count):
        if pos + id_size + 1 > end:
            raise corrupt
        item, associations = _uint(data, pos, id_size), data[pos + id_size]
        pos += id_size + 1
        length = associations * (2 if wide else 1)
        if pos + length > end:
            raise corrupt
        if wide:
            indices = [v & 0x7FFF for v in struct.unpack_from(f">{associations}H", data, pos)]
        else:
            indices = [v & 0x7F for v in data[pos : pos + length]]
        meta.properties.setdefault(item, []).extend(indices)
        pos += length


def _read_iref(data: bytes, start: int, end: int, meta: _Meta, name: str | None) -> None:
    """``dimg`` item references (a derived image and its sources) into ``meta.derived``."""
    if end - start < _FULL_BOX_HEADER:
        raise UnsupportedImage(f"{label(name)}corrupt HEIF: short iref box")
    id_size = _item_id_size(data[start])
    for kind, ref_start, ref_end in _boxes(data, start + _FULL_BOX_HEADER, end, name):
        if kind != b"dimg":
            continue
        count = _uint(data, ref_start + id_size, 2)
        if ref_start + id_size + 2 + count * id_size > ref_end:
            raise UnsupportedImage(f"{label(name)}corrupt HEIF: dimg item references cut short")
        first = ref_start + id_size + 2
        meta.derived.setdefault(_uint(data, ref_start, id_size), []).extend(
            _uint(data, first + i * id_size, id_size) for i in range(count)
        )


def _read_iloc(data: bytes, start: int, end: int, meta: _Meta, name: str | None) -> None:
    """Item data locations (ISO/IEC 14496-12 8.11.3) into ``meta.locations``."""
    where = label(name)
    corrupt = UnsupportedImage(f"{where}corrupt HEIF: iloc item locations cut short")
    if end - start < _FULL_BOX_HEADER + 2:
        raise corrupt
    version = data[start]
    if version > 2:
        raise UnsupportedImage(f"{where}corrupt HEIF: iloc version {version}")
    fields = data[start + 4], data[start + 5]
    offset_size, length_size, base_size = fields[0] >> 4, fields[0] & 15, fields[1] >> 4
    index_size = fields[1] & 15 if version else 0
    if not {offset_size, length_size, base_size, index_size} <= {0, 4, 8}:
        raise UnsupportedImage(f"{where}corrupt HEIF: iloc field sizes other than 0, 4 or 8")
    id_size = 2 if version < 2 else 4
    pos = start + 6 + id_size
    if pos > end:
        raise corrupt
    count, extents_left = _uint(data, pos - id_size, id_size), MAX_BOXES
    extent_size = index_size + offset_size + length_size
    for _ in range(count):
        method_size = 2 if version else 0
        head = id_size + method_size + 2 + base_size + 2
        if pos + head > end:
            raise corrupt
        item = _uint(data, pos, id_size)
        method = _uint(data, pos + id_size, method_size) & 15
        base = _uint(data, pos + head - 2 - base_size, base_size)
        extents = _uint(data, pos + head - 2, 2)
        pos += head
        extents_left -= extents
        if extents_left < 0:
            raise UnsupportedImage(f"{where}corrupt HEIF: more than {MAX_BOXES} iloc extents")
        if pos + extents * extent_size > end:
            raise corrupt
        spans = []
        for _ in range(extents):
            pos += index_size
            offset, length = (
                _uint(data, pos, offset_size),
                _uint(data, pos + offset_size, length_size),
            )
            spans.append((base + offset, length))
            pos += offset_size + length_size
        meta.locations.setdefault(item, []).append(_Location(method, tuple(spans)))


def _read_ipco(data: bytes, start: int, end: int, meta: _Meta, name: str | None) -> None:
    """Every ``ispe`` extent and ``hvcC`` SPS size in ``ipco``, by property index."""
    if meta.extents or meta.pictures:
        raise UnsupportedImage(f"{label(name)}corrupt HEIF: more than one ipco box")
    for index, (kind, box_start, box_end) in enumerate(_boxes(data, start, end, name), 1):
        if kind == b"ispe":
            if box_end - box_start < _FULL_BOX_HEADER + 8:
                raise UnsupportedImage(f"{label(name)}corrupt HEIF: short ispe property")
            meta.extents[index] = struct.unpack_from(">II", data, box_start + _FULL_BOX_HEADER)
        elif kind == b"hvcC":
            try:
                meta.pictures[index] = hvcc_sps_sizes(data[box_start:box_end])
            except ValueError as exc:
                raise UnsupportedImage(f"{label(name)}corrupt HEIF: {exc}") from None


def _read_meta(data: bytes, start: int, end: int, name: str | None) -> _Meta:
    """The parts of a ``meta`` box that say what decoding its primary image costs."""
    meta = _Meta()
    seen_idat = False
    for kind, box_start, box_end in _boxes(data, start + _FULL_BOX_HEADER, end, name):
        if kind == b"pitm" and meta.primary is None:  # libheif, too, reads the first
            id_size = _item_id_size(data[box_start])
            if box_end - box_start < _FULL_BOX_HEADER + id_size:
                raise UnsupportedImage(f"{label(name)}corrupt HEIF: short pitm box")
            meta.primary = _uint(data, box_start + _FULL_BOX_HEADER, id_size)
        elif kind == b"idat" and not seen_idat:
            meta.idat, seen_idat = (box_start, box_end), True
        elif kind == b"iloc":
            _read_iloc(data, box_start, box_end, meta, name)
        elif kind == b"iref":
            _read_iref(data, box_start, box_end, meta, name)
        elif kind == b"iprp":
            for found, prop_start, prop_end in _boxes(data, box_start, box_end, name):
                if found == b"ipco":
                    _read_ipco(data, prop_start, prop_end, meta, name)
                elif found == b"ipma":
                    _read_ipma(data, prop_start, prop_end, meta, name)
    return meta


def _coded_pixels(data: bytes, name: str | None) -> int:
    """Check the whole box structure is present and return the coded size to limit.

    Every top-level box must end inside the file; sizes, associations, references and
    data locations are read from each ``meta`` box.
    """
    coded = 0
    top = list(_boxes(data, 0, len(data), name))
    for meta_start, meta_end in _children(iter(top), b"meta"):
        coded = max(coded, _read_meta(data, meta_start, meta_end, name).coded_pixels(data, name))
    return coded


def _check_brands(data: bytes, name: str | None) -> None:
    """Refuse image sequences and AV1-coded files by their ``ftyp`` brands."""
    brands = iso_brands(data)
    if not brands & _STILL_BRANDS:
        raise UnsupportedImage(
            f"{label(name)}HEIF image sequence (no still-image brand); expected a still image"
        )
    if brands & _AV1_BRANDS and not brands & _HEVC_BRANDS:
        raise UnsupportedImage(
            f"{label(name)}AVIF (AV1-coded) image; only HEVC-coded HEIF (HEIC) is accepted"
        )


def _primary(data: bytes, name: str | None) -> pillow_heif.HeifImage:
    """The primary image of the file, its container parsed and nothing decoded yet."""
    heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=False, hdr_to_16bit=False)
    if len(heif) == 0:
        raise UnsupportedImage(f"{label(name)}HEIF file holds no image")
    return heif[heif.primary_index]


def read_header(data: bytes, name: str | None) -> ImageInfo:
    """The primary image's :class:`ImageInfo`; :class:`UnsupportedImage` unless it is a
    complete, still, 8/10/12-bit RGB HEIC image."""
    where = label(name)
    _check_brands(data, name)
    coded = _coded_pixels(data, name)
    image = _primary(data, name)
    mode = image.mode.split(";")[0]
    if mode in _OTHER_MODES:
        channels, what = _OTHER_MODES[mode]
        plural = "channel" if channels == 1 else "channels"
        raise UnsupportedImage(f"{where}image has {channels} {plural} ({what}); expected RGB")
    if mode != "RGB":
        raise UnsupportedImage(f"{where}HEIF image in mode {image.mode}; expected RGB")
    bits = int(image.info.get("bit_depth", 8))
    if bits not in BIT_DEPTHS:
        raise UnsupportedImage(f"{where}{bits}-bit HEIF image; expected 8, 10 or 12 bits")
    width, height = image.size
    return ImageInfo(
        format=ImageFormat.HEIF,
        width=width,
        height=height,
        channels=3,
        bit_depth=bits,
        exposure=parse_exif(image.info.get("exif")),
        coded_pixels=coded,
    )


def check_complete(data: bytes, info: ImageInfo, name: str | None) -> None:
    """:class:`IncompleteImage` unless the coded image data (an ``mdat`` box) is there.

    :func:`read_header` already walked every top-level box and refused one that runs past
    the end of the file; what it cannot tell is a file cut exactly at a box boundary, after
    the metadata and before the image data, which libheif would only notice while decoding
    in the worker.
    """
    if not any(kind == b"mdat" for kind, _, _ in _boxes(data, 0, len(data), name)):
        raise IncompleteImage(f"{label(name)}truncated HEIF: the image data (mdat) is missing")


def read_exif(data: bytes) -> bytes | None:
    """The primary image's EXIF block (TIFF-structured, as ``parse_exif`` reads), or None."""
    exif = _primary(data, None).info.get("exif")
    return bytes(exif) if exif else None


def widen(pixels: np.ndarray, bits: int) -> np.ndarray:
    """``bits``-bit samples (in uint16) as 16-bit values, by bit replication.

    ``v << (16 - bits) | v >> (2 * bits - 16)`` repeats the sample's top bits below it: 0
    stays 0 and full scale (1023 for 10 bits) becomes 65535, the exact analogue of the
    ``x 257`` that widens 8-bit samples (see :mod:`service.imaging.normalize`), and within
    one level of ``round(v * 65535 / (2**bits - 1))``. A plain shift (libheif's own 16-bit
    output) would leave a saturated pixel at 65472, below where saturated 8- and 16-bit
    pixels land.
    """
    if not 8 < bits < 16:
        raise ValueError(f"expected 9 to 15 bits per sample, got {bits}")
    top = (1 << bits) - 1
    samples = np.minimum(pixels.astype(np.uint16, copy=False), np.uint16(top))
    return (samples << np.uint16(16 - bits)) | (samples >> np.uint16(2 * bits - 16))


def read_pixels(data: bytes, info: ImageInfo, name: str | None) -> np.ndarray:
    """The H x W x 3 samples: uint8 for 8-bit files, uint16 (widened) for 10/12-bit ones."""
    pixels = np.asarray(_primary(data, name))
    check_decoded(pixels, info, name)
    if info.bit_depth > 8:
        pixels = widen(pixels, info.bit_depth)
    return np.ascontiguousarray(pixels)
