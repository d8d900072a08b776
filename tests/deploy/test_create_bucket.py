"""k8s/components/minio/create-bucket.sh: the bucket and lifecycle rule it asks mc for.

compose's minio-init and the k8s minio component's Job both run it. MinIO and its mc
client cannot run here (no container engine, no binaries), so the script runs under the
real /bin/sh with an `mc` stand-in on PATH that records each call and what is piped to it;
the lifecycle rule the script pipes is checked against the S3 API model boto3 sends
requests by (the shape `mc ilm rule import` and `aws s3api` take).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.deployfiles import CREATE_BUCKET, expiry_days, lifecycle_rules

ENDPOINT = "http://minio:9000"
KEY_ID, SECRET = "afunet-local", "afunet-local-secret"

#: Records its arguments (a line each call, tab-terminated) and, for `ilm rule import`, its
#: stdin; fails for the sub-command named in MC_FAIL.
FAKE_MC = """#!/bin/sh
printf '%s\t' "$@" >> "$MC_LOG"
echo >> "$MC_LOG"
if [ "$1 $2 $3" = "ilm rule import" ]; then cat > "$MC_LOG.stdin"; fi
if [ "$1" = "${MC_FAIL:-}" ]; then echo "mc: <ERROR> $1 failed" >&2; exit 1; fi
exit 0
"""


@dataclass
class Run:
    returncode: int
    stderr: str
    calls: list[list[str]]
    imported: str | None


@pytest.fixture
def run_script(tmp_path: Path):  # type: ignore[no-untyped-def]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(FAKE_MC)
    mc.chmod(0o755)
    log = tmp_path / "mc.log"

    def run(storage_url: str, ttl: str | None = "600", fail: str = "") -> Run:
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "MC_LOG": str(log),
            "MC_FAIL": fail,
            "HDR_STORAGE_URL": storage_url,
            "AWS_ENDPOINT_URL": ENDPOINT,
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
        }
        if ttl is not None:
            env["HDR_JOB_TTL_SECONDS"] = ttl
        result = subprocess.run(
            ["/bin/sh", str(CREATE_BUCKET)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        lines = log.read_text().splitlines() if log.exists() else []
        calls = [line.split("\t")[:-1] for line in lines]
        stdin = Path(f"{log}.stdin")
        return Run(
            result.returncode, result.stderr, calls, stdin.read_text() if stdin.exists() else None
        )

    return run


@pytest.mark.parametrize(
    ("storage_url", "ttl", "bucket", "prefix"),
    [
        ("s3://afunet/", "600", "afunet", "jobs/"),  # k8s settings.env
        ("s3://afunet/", None, "afunet", "jobs/"),  # unset: the service's default, 24 h
        ("s3://afunet", "86400", "afunet", "jobs/"),  # compose
        ("s3://media/hdr/service/", "86401", "media", "hdr/service/jobs/"),
    ],
)
def test_creates_the_bucket_and_a_rule_expiring_jobs_after_twice_the_ttl(
    run_script, storage_url: str, ttl: str | None, bucket: str, prefix: str
) -> None:
    run = run_script(storage_url, ttl)
    assert run.returncode == 0, run.stderr
    assert run.calls == [
        ["alias", "set", "store", ENDPOINT, KEY_ID, SECRET, "--api", "S3v4"],
        ["ready", "store"],
        ["mb", "--ignore-existing", f"store/{bucket}"],
        ["ilm", "rule", "import", f"store/{bucket}"],
        ["ilm", "rule", "ls", f"store/{bucket}"],
    ]
    assert run.imported is not None
    (rule,) = lifecycle_rules(run.imported, bucket=bucket)
    assert rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": prefix}
    assert rule["Expiration"] == {"Days": expiry_days(int(ttl or 86400))}


def test_rounds_the_expiry_up_to_whole_days() -> None:
    assert [expiry_days(t) for t in (1, 600, 43200, 43201, 86400, 86401)] == [1, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("storage_url", ["file:///var/lib/hdr", "s3://", "", "afunet"])
def test_refuses_a_store_that_is_no_bucket(run_script, storage_url: str) -> None:
    run = run_script(storage_url)
    assert run.returncode == 2
    assert "HDR_STORAGE_URL must be s3://bucket" in run.stderr
    assert run.calls == [], "nothing is asked of the store"


@pytest.mark.parametrize("ttl", ["1.5", "-1", "1d", ""])
def test_refuses_a_ttl_that_is_not_whole_seconds(run_script, ttl: str) -> None:
    run = run_script("s3://afunet/", ttl)
    assert run.returncode == 2
    assert "HDR_JOB_TTL_SECONDS must be whole seconds" in run.stderr
    assert run.calls == []


def test_stops_at_the_first_failed_step(run_script) -> None:
    # compose starts the API only after minio-init succeeded; the Job retries.
    run = run_script("s3://afunet/", fail="mb")
    assert run.returncode != 0
    assert [call[0] for call in run.calls] == ["alias", "ready", "mb"]
    assert run.imported is None
