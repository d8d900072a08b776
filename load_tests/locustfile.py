"""Load test of afunet-service: what a deployment sustains, and how long a job takes.

Users do what clients of the service do, in a weighted mix (``--mix``):

- **async job** (weight 6): ``POST /v1/jobs`` with three exposures, poll the job's
  ``status_url`` with exponential backoff, download ``result_url`` (OpenEXR);
- **sync job** (weight 2): ``POST /v1/reconstruct``, which answers the file, or 202 with the
  job when it takes longer than the server's wait bound (then polled like an async job);
- **bad upload** (weight 1): a submission the API must refuse with a 4xx before queuing
  (two files, a non-image, frames of different sizes, equal exposures, a tile size that is
  no multiple of 8), each checked against the exact status the HTTP contract names.

The exposure sets are synthetic but realistic (``service.quality.synth.make_scene``:
16-bit gamma-2.2 brackets of a moving scene, 0/2/4-style EV steps) in several sizes
(``--sizes``) and upload formats (16-bit TIFF, 16-bit PNG, 8-bit PNG), encoded once at
start-up. Files go up in a shuffled order with their ``exposure_values`` (the API sorts).

Besides locust's per-request rows, every job reports one row of request type ``JOB``:
``job async <HxW>`` / ``job sync <HxW>``, timed from the submission to the downloaded
result: the end-to-end job time a client sees. A job that fails, is cancelled, or is not
done within ``--job-timeout`` counts as a failure of that row. Read throughput as the JOB
rows' requests per second, and latency as their percentiles (load_tests/README.md).

    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000                # web UI
    locust --config load_tests/ci.conf --host http://127.0.0.1:8000                # CI smoke
    locust --config load_tests/capacity.conf --host http://HOST --csv out/capacity  # capacity

Needs the package installed (``pip install -e .`` or the wheel): the scenes come from it.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Final

import imagecodecs
import numpy as np
import tifffile
from locust import HttpUser, events, task
from locust.env import Environment
from requests import Response

from service.quality.synth import make_scene

log = logging.getLogger("afunet.load")

#: First pause between status polls; it grows by POLL_GROWTH up to --poll-max.
POLL_FIRST_SECONDS: Final = 0.05
POLL_GROWTH: Final = 1.5
#: First bytes of every OpenEXR file.
EXR_MAGIC: Final = b"\x76\x2f\x31\x01"
FINAL_STATES: Final = frozenset({"succeeded", "failed", "cancelled"})
FORMATS: Final = ("tiff16", "png16", "png8")
#: Request type of the end-to-end job rows.
JOB: Final = "JOB"


# ---------------------------------------------------------------------- command line


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("afunet-service")
    group.add_argument(
        "--sizes",
        default="256x384,512x768,1000x1500",
        help="frame sizes HxW of the synthetic exposure sets, comma-separated",
    )
    group.add_argument(
        "--scenes-per-size", type=int, default=2, help="distinct scenes per size and format"
    )
    group.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"upload formats, comma-separated, of {', '.join(FORMATS)}",
    )
    group.add_argument(
        "--mix",
        default="6,2,1",
        help="task weights: async jobs, sync jobs, bad uploads (e.g. 1,0,0 for jobs only)",
    )
    group.add_argument(
        "--api-key",
        default=os.environ.get("HDR_LOAD_API_KEY", ""),
        help="API key, sent as a bearer token (default: $HDR_LOAD_API_KEY)",
    )
    group.add_argument("--model", default="", help="model to ask for (default: the server's)")
    group.add_argument(
        "--job-timeout",
        type=float,
        default=600.0,
        help="seconds after which a job not done counts as failed",
    )
    group.add_argument(
        "--poll-max", type=float, default=1.0, help="longest pause between status polls (s)"
    )
    group.add_argument(
        "--think-time",
        default="0.5,2",
        help="min,max seconds a user waits between two tasks (0,0 for a closed loop)",
    )


def _options(environment: Environment) -> Any:
    options = environment.parsed_options
    if options is None:
        raise RuntimeError("run this locustfile with the locust command line")
    return options


# ---------------------------------------------------------------------- exposure sets


@dataclass(frozen=True)
class ExposureSet:
    """Three encoded exposures of one synthetic scene, short to long."""

    size: str
    """``HxW``, the label of its JOB rows."""
    fmt: str
    files: tuple[tuple[str, bytes, str], ...]
    """(file name, bytes, media type) per exposure, short to long."""
    evs: tuple[float, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(data) for _, data, _ in self.files)

    def form(self, rng: random.Random) -> tuple[list[tuple[str, Any]], dict[str, str]]:
        """The multipart fields in a shuffled order, with ``exposure_values`` to match."""
        order = list(range(len(self.files)))
        rng.shuffle(order)
        files = [("exposures", self.files[i]) for i in order]
        values = ",".join(f"{self.evs[i]:g}" for i in order)
        return files, {"exposure_values": values}


def _encode(frame: np.ndarray, fmt: str) -> tuple[str, bytes, str]:
    if fmt == "tiff16":
        stream = io.BytesIO()
        tifffile.imwrite(stream, frame, photometric="rgb", compression="zlib", predictor=True)
        return "tif", stream.getvalue(), "image/tiff"
    if fmt == "png16":
        return "png", bytes(imagecodecs.png_encode(frame)), "image/png"
    if fmt == "png8":
        return "png", bytes(imagecodecs.png_encode((frame >> 8).astype(np.uint8))), "image/png"
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        height, _, width = item.strip().lower().partition("x")
        sizes.append((int(height), int(width)))
    return sizes


def build_corpus(sizes: str, formats: str, scenes_per_size: int) -> list[ExposureSet]:
    """Every (size, format, scene) exposure set, encoded once."""
    corpus = []
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    for (height, width), index in itertools.product(_sizes(sizes), range(scenes_per_size)):
        scene = make_scene((height * 7919 + width, index), height, width)
        for fmt in fmts:
            encoded = [_encode(frame, fmt) for frame in scene.frames]
            files = tuple(
                (f"scene{index}-ev{ev:g}.{ext}", data, mime)
                for ev, (ext, data, mime) in zip(scene.evs, encoded, strict=True)
            )
            corpus.append(ExposureSet(f"{height}x{width}", fmt, files, scene.evs))
    return corpus


@dataclass(frozen=True)
class BadUpload:
    """A submission the API must refuse before queuing, and the status it must answer."""

    name: str
    status: int
    files: list[tuple[str, Any]]
    data: dict[str, str]


def build_bad_uploads(good: ExposureSet) -> list[BadUpload]:
    """Refusals of the HTTP contract (ARCHITECTURE section 4), from one valid set."""
    files = [("exposures", f) for f in good.files]
    evs = ",".join(f"{v:g}" for v in good.evs)
    name, data, mime = good.files[1]
    height, width = (int(v) for v in good.size.split("x"))
    smaller = make_scene((1, 1), max(16, height // 2), max(16, width // 2)).frames[1]
    _, small_data, small_mime = _encode(smaller, good.fmt)
    return [
        BadUpload("two exposures", 422, files[:2], {"exposure_values": "0,2"}),
        BadUpload(
            "not an image",
            415,
            [
                ("exposures", (f"notes{i}.tif", b"this is not an image\n" * 20, "image/tiff"))
                for i in range(3)
            ],
            {"exposure_values": evs},
        ),
        BadUpload(
            "sizes differ",
            422,
            [files[0], ("exposures", ("small.img", small_data, small_mime)), files[2]],
            {"exposure_values": evs},
        ),
        BadUpload(
            "equal exposures",
            422,
            [files[0], ("exposures", (name, data, mime)), ("exposures", (name, data, mime))],
            {"exposure_values": "0,0,0"},
        ),
        BadUpload("tile size", 400, files, {"exposure_values": evs, "tile_size": "100"}),
    ]


# ---------------------------------------------------------------------- start-up

_CORPUS: list[ExposureSet] = []
_BAD: list[BadUpload] = []


@events.init.add_listener
def _build_corpus(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # a master without users (distributed runs) needs no corpus
        return
    started = time.perf_counter()
    _CORPUS[:] = build_corpus(options.sizes, options.formats, options.scenes_per_size)
    smallest = min(_CORPUS, key=lambda s: s.nbytes)
    _BAD[:] = build_bad_uploads(smallest)
    log.info(
        "%d exposure sets (%s; %s) encoded in %.1f s, %.1f MB in all",
        len(_CORPUS),
        options.sizes,
        options.formats,
        time.perf_counter() - started,
        sum(s.nbytes for s in _CORPUS) / 1e6,
    )


# ---------------------------------------------------------------------- the user


class JobFailed(Exception):
    """A job ended other than succeeded, or too late; the failure of its JOB row."""


class HdrClient(HttpUser):
    """A client of the service: submits exposure sets, waits for results, makes mistakes."""

    def on_start(self) -> None:
        options = _options(self.environment)
        self.rng = random.Random()
        self.options = options
        if options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        low, _, high = options.think_time.partition(",")
        self.think = (float(low), float(high or low))
        weights = [float(w) for w in options.mix.split(",")]
        if len(weights) != 3 or sum(weights) <= 0:
            raise ValueError(f"--mix needs three weights, not all 0: {options.mix!r}")
        self.weights = weights

    def wait_time(self) -> float:
        return self.rng.uniform(*self.think)

    @task
    def one_task(self) -> None:
        action = self.rng.choices(
            (self.async_job, self.sync_job, self.bad_upload), weights=self.weights
        )[0]
        action()

    # -- jobs ------------------------------------------------------------------------------

    def _fields(self, exposure_set: ExposureSet) -> tuple[list[tuple[str, Any]], dict[str, str]]:
        files, data = exposure_set.form(self.rng)
        if self.options.model:
            data["model"] = self.options.model
        return files, data

    def async_job(self) -> None:
        exposure_set = self.rng.choice(_CORPUS)
        files, data = self._fields(exposure_set)
        started = time.perf_counter()
        with self.client.post(
            "/v1/jobs", files=files, data=data, name="/v1/jobs", catch_response=True
        ) as response:
            if response.status_code != 202:
                self._refused(response)
                return
            job = response.json()
        self._follow(job, exposure_set, "async", started)

    def sync_job(self) -> None:
        exposure_set = self.rng.choice(_CORPUS)
        files, data = self._fields(exposure_set)
        started = time.perf_counter()
        with self.client.post(
            "/v1/reconstruct",
            files=files,
            data=data,
            name="/v1/reconstruct",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                if self._check_exr(response):
                    self._job_done(exposure_set, "sync", started, len(response.content))
                else:
                    self._job_failed(exposure_set, "sync", started, "not an OpenEXR file")
                return
            if response.status_code != 202:
                self._refused(response)
                return
            job = response.json()  # still running after the server's wait bound
        self._follow(job, exposure_set, "sync", started)

    def _follow(
        self, job: dict[str, Any], exposure_set: ExposureSet, kind: str, started: float
    ) -> None:
        """Poll the job to its end, download the result, report the JOB row."""
        deadline = started + self.options.job_timeout
        pause = POLL_FIRST_SECONDS
        status = job.get("status", "queued")
        while status not in FINAL_STATES:
            if time.perf_counter() > deadline:
                self._job_failed(
                    exposure_set,
                    kind,
                    started,
                    f"not done after {self.options.job_timeout:g} s ({status})",
                )
                return
            time.sleep(pause * self.rng.uniform(0.8, 1.2))
            pause = min(pause * POLL_GROWTH, self.options.poll_max)
            with self.client.get(
                job["status_url"], name="/v1/jobs/[id]", catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(f"status {response.status_code}: {response.text[:200]}")
                    self._job_failed(exposure_set, kind, started, "status poll failed")
                    return
                job = response.json()
                status = job["status"]
        if status != "succeeded":
            self._job_failed(exposure_set, kind, started, f"job {status}: {job.get('error')}")
            return
        with self.client.get(
            job["result_url"], name="/v1/jobs/[id]/result", catch_response=True
        ) as response:
            if response.status_code != 200 or not self._check_exr(response):
                if response.status_code != 200:
                    response.failure(f"status {response.status_code}: {response.text[:200]}")
                self._job_failed(exposure_set, kind, started, "result download failed")
                return
        self._job_done(exposure_set, kind, started, len(response.content))

    def _check_exr(self, response: Response) -> bool:
        if response.content[:4] != EXR_MAGIC:
            response.failure("the result is not an OpenEXR file")  # type: ignore[attr-defined]
            return False
        return True

    def _refused(self, response: Any) -> None:
        """A submission of a valid set was refused: a failure, named by its status."""
        reason = f"status {response.status_code}: {response.text[:200]}"
        if response.status_code == 429:  # the queue is full: back off as told
            reason = "queue full (429): the deployment is overloaded"
            retry = float(response.headers.get("Retry-After") or 1)
            response.failure(reason)
            time.sleep(min(retry, 30.0))
            return
        response.failure(reason)

    def _report(self, name: str, started: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=JOB,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            response=None,
            context={},
            exception=exc,
        )

    def _job_done(self, exposure_set: ExposureSet, kind: str, started: float, length: int) -> None:
        self._report(f"job {kind} {exposure_set.size}", started, length, None)

    def _job_failed(self, exposure_set: ExposureSet, kind: str, started: float, why: str) -> None:
        self._report(f"job {kind} {exposure_set.size}", started, 0, JobFailed(why))

    # -- mistakes --------------------------------------------------------------------------

    def bad_upload(self) -> None:
        bad = self.rng.choice(_BAD)
        with self.client.post(
            "/v1/jobs",
            files=bad.files,
            data=bad.data,
            name=f"/v1/jobs (bad: {bad.name})",
            catch_response=True,
        ) as response:
            if response.status_code == bad.status:
                response.success()
            else:
                response.failure(
                    f"expected {bad.status}, got {response.status_code}: {response.text[:200]}"
                )
