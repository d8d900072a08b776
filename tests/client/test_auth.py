"""API keys through the client and ``hdr-service submit``, against the real API (on
loopback, no worker: a queued job is all these need)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import Client, ClientError
from service.config import Settings
from service.queue import JobState
from tests.factories import REPO, bracket_uploads
from tests.worker.harness import api_server

KEY = "client-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


@pytest.fixture
def keyed_url(service_settings: Settings) -> Iterator[str]:
    """The API with two keys, on the test's Redis prefix."""
    with api_server(service_settings.model_copy(update={"api_keys": [KEY, OTHER_KEY]})) as url:
        yield url


def _errors(url: str, api_key: str | None, job_id: str) -> ClientError:
    with Client(url, api_key=api_key) as client, pytest.raises(ClientError) as exc:
        client.job(job_id)
    return exc.value


def test_a_job_is_visible_with_the_key_that_made_it_only(keyed_url: str) -> None:
    exposures = [data for _name, data in bracket_uploads()]
    with Client(keyed_url, api_key=KEY) as client:
        job = client.submit(exposures, evs=(-2, 0, 2))
        again = client.job(job.id)

    assert job.status is JobState.QUEUED and again.info == job.info
    other, none, wrong = (
        _errors(keyed_url, key, job.id) for key in (OTHER_KEY, None, "wrong-key-0123456789abcdef")
    )
    assert (other.status, other.code) == (404, "not_found")
    assert (none.status, none.code) == (401, "not_authenticated")
    assert (wrong.status, wrong.code) == (403, "forbidden")


def test_submit_command_takes_url_and_key_from_the_environment(
    keyed_url: str, tmp_path: Path
) -> None:
    paths = []
    for name, data in bracket_uploads():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HDR_", "AFUNET_"))}
    command = [sys.executable, "-m", "service", "submit", *paths, "--ev=-2,0,2"]
    command += ["-o", str(tmp_path / "out.exr"), "--timeout", "1", "--no-progress"]

    def submit(**env: str) -> subprocess.CompletedProcess[str]:
        environ_ = {**environ, "AFUNET_URL": keyed_url, **env}
        return subprocess.run(
            command, cwd=REPO, env=environ_, capture_output=True, text=True, timeout=120
        )

    keyless, keyed = submit(), submit(AFUNET_API_KEY=KEY)

    assert keyless.returncode == 2
    assert keyless.stderr.startswith("hdr-service submit: error: 401 not_authenticated: ")
    assert keyed.returncode == 1  # accepted, but no worker runs it within the timeout
    assert keyed.stderr.startswith("hdr-service submit: error: wait_timeout: job ")
    assert "still queued after 1 s" in keyed.stderr and keyed.stderr.count("\n") == 1
    assert "no live worker serves model 'afunet'" in keyed.stderr  # why it waits
