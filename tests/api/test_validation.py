"""Bad input is refused by the API before it is queued, with the contract's status and a
message that names the problem; nothing refused is queued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.queue import Broker
from service.worker.models import ModelSet
from tests.factories import bracket_frames, bracket_uploads, exposure_files, tiff_file
from tests.imaging.builders import exif_blob, patch_tiff_size, pillow_bytes, png_bomb
from tests.worker.engines import ReferenceEngine, served
from tests.worker.harness import api_server, wait_for, worker_thread

#: Limits of the app under test: small enough to cross cheaply.
MAX_UPLOAD_BYTES = 100_000
MAX_REQUEST_BYTES = 400_000


@pytest.fixture
def limited(service_settings: Settings) -> Settings:
    return service_settings.model_copy(
        update={
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "max_pixels": 200 * 200,
            "min_side": 16,
        }
    )


@pytest.fixture
def client(limited: Settings) -> Iterator[httpx.Client]:
    with api_server(limited) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def post(client: httpx.Client, uploads: list[tuple[str, bytes]], **fields: Any) -> httpx.Response:
    return client.post("/v1/jobs", files=exposure_files(uploads), data=fields)


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error["message"])


def jpeg_with_exif(ev: float, **exif: Any) -> bytes:
    frame = bracket_frames(32, 32, (ev,), bits=8)[0]
    return pillow_bytes(frame, "JPEG", exif=exif_blob(header=True, **exif))


@pytest.mark.anyio
async def test_nothing_is_queued_by_refused_requests(client: httpx.Client, broker: Broker) -> None:
    post(client, bracket_uploads()[:2], exposure_values="-2,0")
    post(client, [("a.tif", b"nonsense")] * 3, exposure_values="-2,0,2")
    assert await broker.queue_depth() == 0
    assert await broker.redis.xlen(broker.keys.stream(broker.settings.default_model)) == 0


@pytest.mark.parametrize("count", [1, 2, 4])
def test_wrong_number_of_exposures_is_422(client: httpx.Client, count: int) -> None:
    uploads = bracket_uploads(evs=(-2, -1, 0, 1))[:count]
    response = post(client, uploads, exposure_values=",".join(["0"] * count))
    assert_error(response, 422, "invalid_exposure_set", "expected 3 exposures", f"got {count}")


def test_missing_exposures_field_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", data={"exposure_values": "-2,0,2"})
    assert_error(response, 400, "bad_request", "exposures")


def test_file_that_is_no_image_is_415_naming_it(client: httpx.Client) -> None:
    uploads = bracket_uploads()
    uploads[1] = ("notes.tif", b"%PDF-1.7 not an image at all")
    response = post(client, uploads, exposure_values="-2,0,2")
    assert_error(response, 415, "unsupported_image", "notes.tif")


def test_format_is_judged_by_content_not_by_name(client: httpx.Client) -> None:
    uploads = [(f"photo{i}.jpg", data) for i, (_, data) in enumerate(bracket_uploads())]
    response = post(client, uploads, exposure_values="-2,0,2")
    assert response.status_code == 202, response.text  # TIFF bytes named .jpg are TIFFs


def test_decompression_bomb_is_413_before_any_pixel_is_decoded(client: httpx.Client) -> None:
    uploads = bracket_uploads()
    uploads[0] = ("bomb.png", png_bomb(100_000, 100_000))
    response = post(client, uploads, exposure_values="-2,0,2")
    assert_error(response, 413, "image_too_large", "bomb.png", "10000000000 pixels")


def test_frame_over_the_pixel_limit_is_413(client: httpx.Client) -> None:
    uploads = bracket_uploads()
    uploads[2] = ("huge.tif", patch_tiff_size(uploads[2][1], 4000, 3000))
    response = post(client, uploads, exposure_values="-2,0,2")
    assert_error(response, 413, "image_too_large", "huge.tif", "4000x3000")


def test_file_over_the_byte_limit_is_413(client: httpx.Client) -> None:
    uploads = bracket_uploads()
    uploads[1] = ("big.tif", tiff_file(np.zeros((190, 190, 3), np.uint16)))  # 216 kB
    response = post(client, uploads, exposure_values="-2,0,2")
    assert_error(response, 413, "image_too_large", "big.tif", str(MAX_UPLOAD_BYTES))


def test_declared_body_over_the_limit_is_413_before_it_is_read(client: httpx.Client) -> None:
    response = client.post(
        "/v1/jobs",
        content=b"x" * (MAX_REQUEST_BYTES + 1),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "request_too_large", str(MAX_REQUEST_BYTES))


def test_streamed_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b"--b\r\nContent-Disposition: form-data; name=exposures; filename=a.tif\r\n\r\n"
        for _ in range(MAX_REQUEST_BYTES // 10_000 + 2):
            yield b"\0" * 10_000

    response = client.post(
        "/v1/jobs",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "request_too_large")


def test_malformed_multipart_body_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/jobs",
        content=b"--nope\r\ngarbage without headers",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_mismatched_sizes_are_422_naming_both(client: httpx.Client) -> None:
    uploads = bracket_uploads(48, 64)
    uploads[2] = ("wide.tif", bracket_uploads(48, 80)[2][1])
    response = post(client, uploads, exposure_values="-2,0,2")
    assert_error(response, 422, "invalid_exposure_set", "wide.tif", "64x48", "80x48")


def test_frame_under_the_minimum_size_is_422(client: httpx.Client) -> None:
    response = post(client, bracket_uploads(8, 64), exposure_values="-2,0,2")
    assert_error(response, 422, "invalid_exposure_set", "64x8", "minimum of 16")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ("-2,0,nan", ["'nan' is not a plain decimal number"]),
        ("-2,inf,2", ["'inf' is not a plain decimal number"]),
        ("0,1_0,2_0", ["'1_0' is not a plain decimal number"]),  # float() says 10
        ("0,2e0,4", ["'2e0' is not a plain decimal number"]),
        ("0,0,2", ["differ"]),
        ("-2,0", ["expected 3 values", "got 2"]),
        ("-2,zero,2", ["'zero' is not a plain decimal number"]),
        ("-100,0,2", ["implausible"]),
    ],
)
def test_invalid_exposure_values_are_422(
    client: httpx.Client, values: str, words: list[str]
) -> None:
    response = post(client, bracket_uploads(), exposure_values=values)
    assert_error(response, 422, "invalid_exposure_set", "exposure_values", *words)


def test_non_positive_exposure_times_are_422(client: httpx.Client) -> None:
    response = post(client, bracket_uploads(), exposure_times="0.01,0,0.04")
    assert_error(response, 422, "invalid_exposure_set", "positive")


@pytest.mark.parametrize("bad", ["1_0", "1e-2", "nan", "1/100"])
def test_exposure_times_that_are_not_plain_decimals_are_422_naming_the_value(
    client: httpx.Client, bad: str
) -> None:
    response = post(client, bracket_uploads(), exposure_times=f"0.01,{bad},0.04")
    assert_error(
        response, 422, "invalid_exposure_set", "exposure_times", f"{bad!r} is not a plain decimal"
    )


def test_exposure_values_become_stops_relative_to_the_shortest(client: httpx.Client) -> None:
    uploads = bracket_uploads()
    for values in ("-2,0,2", "0,2,4", "10 12 14"):
        response = post(client, uploads, exposure_values=values)
        assert response.status_code == 202, response.text
        assert response.json()["exposure_values"] == [0.0, 2.0, 4.0]


def test_both_exposure_fields_are_422(client: httpx.Client) -> None:
    response = post(client, bracket_uploads(), exposure_values="-2,0,2", exposure_times="1,2,4")
    assert_error(response, 422, "invalid_exposure_set", "not both")


def test_exposure_times_become_stops_relative_to_the_shortest(client: httpx.Client) -> None:
    uploads = bracket_uploads()
    response = post(client, [uploads[1], uploads[2], uploads[0]], exposure_times="0.04 0.16 0.01")
    assert response.status_code == 202, response.text
    assert response.json()["exposure_values"] == pytest.approx([0.0, 2.0, 4.0])


def test_exif_exposure_decides_without_form_fields(client: httpx.Client) -> None:
    uploads = [
        ("long.jpg", jpeg_with_exif(2, exposure_time=(1, 25))),
        ("short.jpg", jpeg_with_exif(-2, exposure_time=(1, 400))),
        ("mid.jpg", jpeg_with_exif(0, exposure_time=(1, 100))),
    ]
    response = post(client, uploads)
    assert response.status_code == 202, response.text
    assert response.json()["exposure_values"] == pytest.approx([0.0, 2.0, 4.0])


def test_exif_aperture_and_iso_count_only_when_they_differ(client: httpx.Client) -> None:
    same_time = (1, 100)
    uploads = [
        ("a.jpg", jpeg_with_exif(0, exposure_time=same_time, f_number=(80, 10), iso=100)),
        ("b.jpg", jpeg_with_exif(0, exposure_time=same_time, f_number=(40, 10), iso=100)),
        ("c.jpg", jpeg_with_exif(0, exposure_time=same_time, f_number=(40, 10), iso=400)),
    ]
    response = post(client, uploads)
    assert response.status_code == 202, response.text
    # f/8 -> f/4 is two stops more light, ISO 100 -> 400 two more.
    assert response.json()["exposure_values"] == pytest.approx([0.0, 2.0, 4.0])


def test_missing_exif_exposure_is_422_naming_the_file(client: httpx.Client) -> None:
    uploads = [
        ("a.jpg", jpeg_with_exif(-2, exposure_time=(1, 400))),
        ("b.jpg", jpeg_with_exif(0, exposure_time=None)),
        ("c.jpg", jpeg_with_exif(2, exposure_time=(1, 25))),
    ]
    response = post(client, uploads)
    assert_error(response, 422, "invalid_exposure_set", "b.jpg", "ExposureTime")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tile_size": "big"}, ["tile_size", "integer"]),
        ({"tile_size": "-8"}, ["tile_size"]),
        ({"tile_size": "4096"}, ["tile_size"]),
        ({"tile_size": "60"}, ["tile_size", "multiple of 8"]),
        ({"model": "../etc"}, ["model"]),
        ({"exposure_value": "-2,0,2"}, ["exposure_value", "not permitted"]),
    ],
)
def test_mistyped_form_fields_are_400_naming_the_field(
    client: httpx.Client, fields: dict[str, str], words: list[str]
) -> None:
    data = {"exposure_values": "-2,0,2", **fields}
    response = post(client, bracket_uploads(), **data)
    assert_error(response, 400, "bad_request", *words)


def test_tile_size_within_the_served_model_overlap_is_400(
    client: httpx.Client, limited: Settings
) -> None:
    models = ModelSet(served={"afunet": served("afunet", ReferenceEngine(), overlap=8)})
    with worker_thread(limited, models):
        wait_for(lambda: client.get("/v1/models").json()["workers"], 10, "the heartbeat")
        response = post(client, bracket_uploads(), exposure_values="-2,0,2", tile_size=16)
    assert_error(response, 400, "bad_request", "tile_size", "overlap (8 px)")


def test_untiled_run_of_a_large_frame_is_400(client: httpx.Client, limited: Settings) -> None:
    big = limited.model_copy(update={"max_pixels": 4_000_000, "max_upload_bytes": 20_000_000})
    big = big.model_copy(update={"max_request_bytes": 70_000_000})
    with api_server(big) as url, httpx.Client(base_url=url, timeout=30) as http:
        response = post(
            http, bracket_uploads(1100, 1000, bits=8), exposure_values="-2,0,2", tile_size=0
        )
    assert_error(response, 400, "bad_request", "tile_size", "untiled")


def test_malformed_idempotency_key_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/jobs",
        files=exposure_files(bracket_uploads()),
        data={"exposure_values": "-2,0,2"},
        headers={"Idempotency-Key": "x" * 300},
    )
    assert_error(response, 400, "bad_request", "Idempotency-Key")


def test_bad_result_format_is_400(client: httpx.Client) -> None:
    job = post(client, bracket_uploads(), exposure_values="-2,0,2").json()
    response = client.get(job["result_url"], params={"format": "gif"})
    assert_error(response, 400, "bad_request", "format")


def test_unknown_route_and_method_keep_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.put("/v1/jobs"), 405, "method_not_allowed")


def test_exposure_values_are_sorted_and_relative_to_the_shortest(client: httpx.Client) -> None:
    response = post(client, bracket_uploads(), exposure_values="2.5,-1.5,0.5")
    assert response.status_code == 202
    assert response.json()["exposure_values"] == [0.0, 2.0, 4.0]
