"""From the submitted form to what the broker stores: every check that keeps bad input out.

The multipart parser has spooled each file to a temporary file (memory only up to 1 MB);
the files are read here one at a time for their headers and dropped again, so the API
never holds a whole exposure set in memory: the broker then streams each file from its
temporary file to the blob store.

Run in the API before anything is queued, cheapest first, and never decoding a pixel:
count of files, bytes per file, format and size from the header alone (:func:`probe`
refuses decompression bombs by their declared pixel count) and complete pixel data, in a
thread under a deadline (:class:`ProbeDeadline`), minimum size, equal sizes,
then the exposure metadata (form fields or EXIF), which decides the order the frames are
stored in: short to long, as the model wants them. Each failure is the ``ServiceError``
whose status the HTTP contract names, with a message that names the field or file.

EV convention (documented in the OpenAPI form description too): every source becomes EV
stops relative to the shortest exposure, the convention of the official data (Kalantari's
``exposure.txt`` holds ``0 2 4``; see ``service.exposures``). The model divides by
``2**EV``, so ``-2,0,2`` and ``0,2,4`` would otherwise give different results; shifted, they
are the same request, and absolute times (1/1000 s is EV -10) land where the model was
trained:

- ``exposure_values``: plain decimal EV stops, shifted so that the shortest is 0;
- ``exposure_times`` (plain decimal seconds): ``EV_i = log2(t_i / t_min)``;
- EXIF: the effective exposure is ``ExposureTime * ISO/100 / FNumber**2``, with the
  ISO and FNumber terms only when every frame records them and they differ between
  frames (when equal they cancel out; when some frame lacks them nothing can be compared),
  then relative to the shortest as above.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final

from fastapi import UploadFile

from service.api.probing import ProbeDeadline
from service.api.schemas import JobCreate
from service.config import Settings
from service.engines.tiling import tile_count
from service.errors import BadRequest, ImageTooLarge, InvalidExposureSet, JobTooLarge
from service.exposures import (
    check_exposure_values,
    ev_from_exposure_times,
    parse_exposure_values,
    relative_to_shortest,
)
from service.imaging import EXPOSURE_COUNT, ImageInfo, check_bracket
from service.queue.jobs import JobParams

#: Form fields besides the files: one MiB is far more than any honest form needs.
FORM_OVERHEAD_BYTES: Final = 1024 * 1024
#: Largest frame that may run untiled (tile_size=0): the whole frame is one engine call.
MAX_UNTILED_PIXELS: Final = 1024 * 1024
#: Uploads whose bytes the API holds at once while probing their headers, whatever the
#: number of concurrent submissions (the rest of a submission streams from disk).
PROBE_SLOTS: Final = 2
#: File names are echoed in messages; keep them short and printable.
MAX_NAME_CHARS: Final = 80


def request_body_limit(settings: Settings) -> int:
    """Largest request body accepted: the configured one, else three full files plus a form."""
    if settings.max_request_bytes is not None:
        return settings.max_request_bytes
    return EXPOSURE_COUNT * settings.max_upload_bytes + FORM_OVERHEAD_BYTES


@dataclass(frozen=True)
class Submission:
    """A validated exposure set, short to long, ready for :meth:`Broker.submit`."""

    files: list[BinaryIO]
    """The uploads' spooled files, sorted by exposure (read by the broker, streamed)."""
    sizes: list[int]
    infos: list[ImageInfo]
    names: list[str]
    evs: tuple[float, ...]
    """EV stops relative to the shortest exposure (the first is 0), strictly increasing."""
    source: str
    """Where the EVs came from: ``exposure_values``, ``exposure_times`` or ``exif``."""
    digests: list[str]
    """SHA-256 (hex) of each upload's bytes, in the order of ``files``."""

    @property
    def width(self) -> int:
        return self.infos[0].width

    @property
    def height(self) -> int:
        return self.infos[0].height

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def request_digest(
        self, model: str | None, tile_size: int | None, webhook_url: str | None = None
    ) -> str:
        """SHA-256 over everything that decides the job: the files' bytes (short to
        long), the normalised EVs, the model asked for, the tile size and the webhook.

        Stored on the record so that a retry under the same Idempotency-Key is recognised
        as the same request and any other request under it is refused. Normalised, so that
        equivalent spellings are one request: EVs relative to the shortest (``-2,0,2`` is
        ``0,2,4``; exposure times become the same stops), frames in exposure order
        whatever the upload order; EVs rounded to 1e-6 stops, far below any real
        difference, so that float noise of a conversion cannot tell two retries apart.
        """
        fields = [
            *self.digests,
            ",".join(f"{ev:.6f}" for ev in self.evs),
            model or "",
            "" if tile_size is None else str(tile_size),
            webhook_url or "",
        ]
        return hashlib.sha256("\n".join(fields).encode()).hexdigest()

    def params(self, tile_size: int | None) -> JobParams:
        """The job parameters the worker reads (the broker adds the blob names)."""
        return JobParams(
            exposure_values=self.evs,
            exposure_source=self.source,
            names=tuple(self.names),
            formats=tuple(info.format.value for info in self.infos),
            tile_size=tile_size,
        )


def _display_name(upload: UploadFile, index: int) -> str:
    raw = upload.filename or ""
    name = "".join(c for c in raw if c.isprintable()).strip()[:MAX_NAME_CHARS]
    return name or f"exposure {index + 1}"


async def _probe_upload(
    upload: UploadFile,
    name: str,
    limit: int,
    max_pixels: int,
    slots: asyncio.Semaphore,
    deadline: ProbeDeadline,
) -> tuple[ImageInfo, int, str]:
    """The file's header, size and SHA-256, refusing it (413) as soon as it is known to
    exceed ``limit``. The bytes are hashed while they are in memory for the probe anyway,
    then dropped again and the file rewound for the broker; at most ``slots`` files of
    all concurrent submissions are held in memory at once."""
    if upload.size is not None and upload.size > limit:
        raise ImageTooLarge(f"{name}: {upload.size} bytes, over the limit of {limit} bytes")
    async with slots:
        await upload.seek(0)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLarge(f"{name}: more than {limit} bytes, over the limit")
        info = await deadline.verify(data, name, max_pixels)
        size = len(data)
        digest = (await asyncio.to_thread(hashlib.sha256, data)).hexdigest()  # off the loop
        del data
    await upload.seek(0)
    return info, size, digest


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _varying(values: Sequence[float | None]) -> list[float] | None:
    """``values`` when every frame records one and they are not all equal, else None."""
    known = [v for v in values if v is not None]
    return known if len(known) == len(values) and len(set(known)) > 1 else None


def _evs_from_exif(infos: Sequence[ImageInfo], names: Sequence[str]) -> tuple[float, ...]:
    """EV stops from ExposureTime, ISO/100 and 1/FNumber**2 (see the module docstring)."""
    times: list[float] = []
    f_numbers: list[float | None] = []
    isos: list[float | None] = []
    for info, name in zip(infos, names, strict=True):
        exif = info.exposure
        if exif is None or exif.exposure_time is None:
            raise InvalidExposureSet(
                f"{name}: no EXIF ExposureTime; send exposure_values (EV stops) or"
                " exposure_times (seconds) with the files"
            )
        times.append(exif.exposure_time)
        f_numbers.append(exif.f_number)
        isos.append(exif.iso)
    evs = [math.log2(t) for t in times]
    if (apertures := _varying(f_numbers)) is not None:
        evs = [ev - 2 * math.log2(f) for ev, f in zip(evs, apertures, strict=True)]
    if (gains := _varying(isos)) is not None:
        evs = [ev + math.log2(iso / 100) for ev, iso in zip(evs, gains, strict=True)]
    return relative_to_shortest(evs)


def _exposure_values(
    form: JobCreate, infos: Sequence[ImageInfo], names: Sequence[str]
) -> tuple[tuple[float, ...], str]:
    """EV stops in upload order, relative to the shortest, and where they came from."""
    if form.exposure_values is not None and form.exposure_times is not None:
        raise InvalidExposureSet("give exposure_values or exposure_times, not both")
    if form.exposure_values is not None:
        source, text = "exposure_values", form.exposure_values
    elif form.exposure_times is not None:
        source, text = "exposure_times", form.exposure_times
    else:
        return _evs_from_exif(infos, names), "exif"
    values = parse_exposure_values(text, source)
    if len(values) != len(infos):
        raise InvalidExposureSet(
            f"{source}: expected {len(infos)} values, one per exposure, got {len(values)}"
        )
    if source == "exposure_times":
        return relative_to_shortest(ev_from_exposure_times(values)), source
    return relative_to_shortest(values), source  # plain decimals, 200 characters: finite


async def read_submission(
    form: JobCreate, settings: Settings, probe_slots: asyncio.Semaphore
) -> Submission:
    """Validate the form's files and exposure metadata; sort the frames short to long.

    ``probe_slots`` (the app's, :data:`PROBE_SLOTS`) bounds how many files' bytes all
    concurrent submissions hold in memory together while their headers are probed.
    """
    uploads = form.exposures
    if len(uploads) != EXPOSURE_COUNT:
        raise InvalidExposureSet(
            f"expected {EXPOSURE_COUNT} exposures (the `exposures` field once per file),"
            f" got {len(uploads)}"
        )
    names = [_display_name(upload, i) for i, upload in enumerate(uploads)]
    if len(set(names)) != len(names):  # keep messages unambiguous
        names = [f"{name} (#{i + 1})" for i, name in enumerate(names)]
    async with ProbeDeadline(settings.probe_timeout_seconds) as deadline:
        probed = [
            await _probe_upload(
                upload, name, settings.max_upload_bytes, settings.max_pixels, probe_slots, deadline
            )
            for upload, name in zip(uploads, names, strict=True)
        ]
    infos = [info for info, _, _ in probed]
    for info, name in zip(infos, names, strict=True):
        if min(info.width, info.height) < settings.min_side:
            raise InvalidExposureSet(
                f"{name}: image is {info.width}x{info.height}, smaller than the minimum of"
                f" {settings.min_side} pixels per side"
            )
    check_bracket(infos, names)
    evs, source = _exposure_values(form, infos, names)
    if len(set(evs)) != len(evs):
        raise InvalidExposureSet(f"{source}: exposures must differ, got {_fmt(evs)}")
    order = sorted(range(len(evs)), key=lambda i: evs[i])
    try:
        checked = check_exposure_values([evs[i] for i in order])
    except InvalidExposureSet as exc:
        raise InvalidExposureSet(f"{source}: {exc.message}") from exc
    return Submission(
        files=[uploads[i].file for i in order],
        sizes=[probed[i][1] for i in order],
        infos=[infos[i] for i in order],
        names=[names[i] for i in order],
        evs=checked,
        source=source,
        digests=[probed[i][2] for i in order],
    )


def check_tile_size(
    tile_size: int | None, width: int, height: int, overlap: int | None
) -> int | None:
    """Refuse (400) a tile size the engine could not run; ``overlap`` is the model's if known."""
    if tile_size is None:
        return None
    if tile_size == 0:
        if width * height > MAX_UNTILED_PIXELS:
            raise BadRequest(
                f"tile_size: 0 (untiled) is allowed for frames up to {MAX_UNTILED_PIXELS}"
                f" pixels; this one has {width * height}"
            )
        return 0
    if tile_size % 8:
        raise BadRequest(f"tile_size: must be a multiple of 8, got {tile_size}")
    if overlap is not None and tile_size <= 2 * overlap:
        raise BadRequest(
            f"tile_size: must exceed twice the model's tile overlap ({overlap} px), got {tile_size}"
        )
    return tile_size


def check_job_cost(
    settings: Settings,
    width: int,
    height: int,
    tile_size: int | None,
    model_tile_size: int | None,
    overlap: int | None,
) -> int:
    """The job's tile count, refused (422 ``job_too_large``) past HDR_MAX_TILES_PER_JOB.

    Tiles, not bytes, are what a job costs a worker: a flat 4000x4000 PNG is a few KB
    but hundreds of tiles, and a small ``tile_size`` multiplies them. The client's tile
    size, else the one the serving workers report for the model, else the settings'
    (no worker has reported yet); the overlap likewise.
    """
    size = tile_size if tile_size is not None else model_tile_size or settings.tile_size
    edge = overlap if overlap is not None else settings.tile_overlap
    if size and 2 * edge >= size:  # not checked without a worker's overlap: the worker
        edge = 0  # refuses it; counted without overlap here, the fewest tiles it could be
    tiles = tile_count(height, width, size or None, edge if size else 0)
    limit = settings.max_tiles_per_job
    if limit is not None and tiles > limit:
        raise JobTooLarge(
            f"a {width}x{height} frame in {size}-pixel tiles is {tiles} tiles,"
            f" over the limit of {limit} per job (HDR_MAX_TILES_PER_JOB); send a smaller"
            " frame or a larger tile_size"
        )
    return tiles
