"""docker-compose.yml follows the compose specification and agrees with the service.

The compose-spec JSON schema is the one check-jsonschema vendors (``vendor.compose-spec``);
no Docker engine is needed. The file is checked as written (with ``${VAR:-default}``) and
as compose sees it with every variable unset (defaults substituted).
"""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from service.config import Settings
from service.engines.registry import CONFIG_SETTINGS
from service.metrics import NAMESPACE
from tests.deploy.deployfiles import (
    CREATE_BUCKET,
    REPO,
    compose_default,
    compose_document,
    interpolate,
    redis_bytes,
    redis_directives,
    redis_memory_needed,
    setting_fields,
)

#: Settings fixed to a container-side value (mount paths, the in-container ports the health
#: checks and Prometheus targets use, the Compose network's Redis and MinIO bucket) instead
#: of the default.
FIXED = {
    "HDR_REDIS_URL": "redis://redis:6379/0",
    "HDR_STORAGE_URL": "s3://afunet/",
    "HDR_MODEL_REPO": "/opt/hdr/model_repo",
    "HDR_ENGINE_CACHE": "/var/cache/hdr/engines",
    "HDR_API_HOST": "0.0.0.0",
    "HDR_API_PORT": "8000",
    "HDR_WORKER_METRICS_HOST": "0.0.0.0",
    "HDR_WORKER_METRICS_PORT": "9108",
    "HDR_DEVICE": "cpu",  # the CPU worker's; the GPU worker's is ${HDR_DEVICE:-auto}
}
#: Settings of `hdr-service serve` only (its embedded Redis): meaningless here.
NOT_IN_COMPOSE = {"embedded_redis_dir"}
API_SERVICES = ("api",)
WORKER_SERVICES = ("worker", "worker-cpu")
#: The S3 client's standard variables (boto3's, not settings) the API and workers get.
S3_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"}
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "afunet-service.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    data: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_document()


def _errors(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification(
    schema: dict[str, Any], compose: dict[str, Any]
) -> None:
    assert _errors(schema, compose) == []
    assert _errors(schema, interpolate(compose)) == []


def test_schema_check_rejects_a_broken_compose_file(
    schema: dict[str, Any], compose: dict[str, Any]
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["depends_on"]["redis"]["condition"] = "healthy"
    broken["services"]["api"]["restart"] = {"always": True}
    assert len(_errors(schema, broken)) >= 2


def test_services_start_after_their_dependencies_are_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "api", "worker", "worker-cpu", "prometheus", "grafana"}
    assert set(services) >= {"minio", "minio-init"}
    for name in (*API_SERVICES, *WORKER_SERVICES):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            # The bucket and its lifecycle rule exist before the first upload.
            "minio-init": {"condition": "service_completed_successfully"},
        }, name
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"


def test_redis_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in redis["volumes"]}
    assert mounted["./docker/redis/redis.conf"] == "/usr/local/etc/redis/redis.conf"
    assert mounted["redis-data"] == "/data"
    assert redis["command"][-1] == "/usr/local/etc/redis/redis.conf"
    compose_conf = redis_directives(REPO / "docker" / "redis" / "redis.conf")
    cluster_conf = redis_directives(REPO / "k8s" / "base" / "redis" / "redis.conf")
    for conf in (compose_conf, cluster_conf):
        assert conf["appendonly"] == "yes"
        assert conf["maxmemory-policy"] == "noeviction"
        assert conf["dir"] == "/data"
    for directive in ("appendonly", "appendfsync", "maxmemory-policy", "save", "port", "dir"):
        assert compose_conf[directive] == cluster_conf[directive], directive


def test_redis_memory_fits_the_job_state_of_a_ttl_window(compose: dict[str, Any]) -> None:
    ttl = int(interpolate(compose)["services"]["api"]["environment"]["HDR_JOB_TTL_SECONDS"])
    maxmemory = redis_bytes(redis_directives(REPO / "docker" / "redis" / "redis.conf")["maxmemory"])
    # One GPU worker: the `worker` service reserves one GPU (copy it per further GPU).
    assert maxmemory >= redis_memory_needed(1, ttl)
    # ...and no longer the gigabytes that uploads and results took.
    assert maxmemory <= 4 * redis_memory_needed(1, ttl)


def test_gpu_worker_reserves_a_gpu_and_cpu_worker_runs_without(compose: dict[str, Any]) -> None:
    gpu, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1
    assert "deploy" not in cpu
    assert gpu["build"]["target"] == "worker" and cpu["build"]["target"] == "worker-cpu"
    assert compose["services"]["api"]["build"]["target"] == "api"
    assert cpu["environment"]["HDR_DEVICE"] == "cpu"


def _value_as_setting(field: str, text: str) -> Any:
    """What Settings makes of ``text`` given in the field's variable."""
    return getattr(Settings.model_validate({field: text} if text != "" else {}), field)


def test_every_setting_comes_from_the_environment_with_its_default(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    envs = {name: services[name]["environment"] for name in (*API_SERVICES, *WORKER_SERVICES)}
    seen: set[str] = set()
    for service, env in envs.items():
        assert {v for v in env if not v.startswith("HDR_")} == S3_VARIABLES, service
        for variable, value in env.items():
            if variable in S3_VARIABLES:
                continue
            field = variable[4:].lower()
            assert field in Settings.model_fields, f"{service}: {variable} is no setting"
            seen.add(field)
            if field in CONFIG_SETTINGS:  # a default here would override config.yaml
                assert value is None, f"{service}: {variable} must be passed through only"
                continue
            if value is None:  # passed through when set: only for settings unset by default
                assert setting_fields()[field] in (None, ""), f"{variable} needs a default"
                continue
            has_default, default = compose_default(value)
            if not has_default:
                assert str(value) == FIXED.get(variable), f"{service}: {variable}={value!r}"
                continue
            assert default is not None
            expected = setting_fields()[field] if field != "worker_id" else Settings().worker_id
            assert _value_as_setting(field, default) == expected or default == FIXED.get(
                variable
            ), f"{service}: {variable} defaults to {default!r}, Settings to {expected!r}"
    assert seen == set(Settings.model_fields) - NOT_IN_COMPOSE


def test_every_service_environment_is_valid_settings(compose: dict[str, Any]) -> None:
    resolved = interpolate(compose)
    for name in (*API_SERVICES, *WORKER_SERVICES):
        env = {
            k[4:].lower(): str(v)
            for k, v in resolved["services"][name]["environment"].items()
            if v is not None and k.startswith("HDR_")
        }
        settings = Settings.model_validate(env)
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.storage_url == "s3://afunet/"


def test_ports_and_scrape_targets_agree_with_the_settings(compose: dict[str, Any]) -> None:
    defaults = Settings()
    resolved = interpolate(compose)
    (api_port,) = resolved["services"]["api"]["ports"]
    assert api_port.rsplit(":", 1)[1] == str(defaults.api_port)
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["afunet-api"]["static_configs"][0]["targets"] == [f"api:{defaults.api_port}"]
    (sd,) = jobs["afunet-worker"]["dns_sd_configs"]
    assert sd["port"] == defaults.worker_metrics_port
    assert set(sd["names"]) == set(WORKER_SERVICES)
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())


def test_worker_stop_grace_period_exceeds_the_drain_time(compose: dict[str, Any]) -> None:
    resolved = interpolate(compose)
    for name in WORKER_SERVICES:
        service = resolved["services"][name]
        grace = service["stop_grace_period"]
        seconds = int(re.fullmatch(r"(\d+)s", grace).group(1))  # type: ignore[union-attr]
        drain = float(service["environment"]["HDR_DRAIN_SECONDS"])
        assert drain == Settings().drain_seconds
        assert seconds >= drain + 15, f"{name}: {grace} leaves no time after a {drain} s drain"


def test_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    resolved = interpolate(compose)
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source}"


def test_grafana_provisioning_points_at_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provider = yaml.safe_load(
        (REPO / "docker/grafana/provisioning/dashboards/afunet.yml").read_text()
    )["providers"][0]
    assert mounts[provider["options"]["path"]] == "./docker/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    source = yaml.safe_load(
        (REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"


def _exported_metric_names() -> set[str]:
    """Every series name service/metrics.py defines, with the suffixes Prometheus adds."""
    text = (REPO / "service" / "metrics.py").read_text()
    names = {f"{NAMESPACE}_{m}" for m in re.findall(r'f"\{NAMESPACE\}_(\w+)"', text)}
    suffixes = ("", "_total", "_bucket", "_sum", "_count", "_created")
    return {n + s for n in names for s in suffixes}


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_only_metrics_the_service_exports() -> None:
    exported = _exported_metric_names()
    used = {m for e in _dashboard_expressions() for m in re.findall(r"\bhdr_\w+", e)}
    assert used, "the dashboard queries no service metric"
    assert used <= exported, f"not exported by service/metrics.py: {used - exported}"


def test_dashboard_shows_queue_latency_throughput_errors_and_gpu_memory() -> None:
    text = "\n".join(_dashboard_expressions())
    for metric in (
        "hdr_queue_depth",
        "hdr_queue_oldest_job_age_seconds",
        "hdr_job_stage_seconds_bucket",
        "hdr_job_latency_seconds_bucket",
        "hdr_jobs_total",
        "hdr_pixels_processed_total",
        "hdr_jobs_rejected_total",
        "hdr_http_requests_total",
        "hdr_gpu_memory_allocated_bytes",
        "hdr_gpu_memory_reserved_bytes",
    ):
        assert metric in text, metric
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_compose_publishes_monitoring_on_loopback_by_default(compose: dict[str, Any]) -> None:
    resolved = interpolate(compose)
    for name in ("prometheus", "grafana"):
        for port in resolved["services"][name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_redis_is_not_published(compose: dict[str, Any]) -> None:
    assert "ports" not in compose["services"]["redis"]


# ---------------------------------------------------------------------- the blob store


def _image_is_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest" and "/" not in tag, f"{image} is not pinned"


def test_minio_keeps_its_data_and_reports_health(compose: dict[str, Any]) -> None:
    minio = interpolate(compose)["services"]["minio"]
    _image_is_pinned(minio["image"])
    assert minio["image"].rsplit(":", 1)[1].startswith("RELEASE.")
    assert minio["command"] == ["server", "/data"]
    assert "minio-data:/data" in minio["volumes"]
    assert "minio-data" in compose["volumes"]
    # The image has no curl: its own mc asks the server's health endpoint.
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    # MinIO ignores AbortIncompleteMultipartUpload rules; this is its own 1-day abort.
    assert minio["environment"]["MINIO_API_STALE_UPLOADS_EXPIRY"] == "24h"
    assert "ports" not in minio, "MinIO stays inside the compose network"


@pytest.mark.parametrize(
    "environ",
    [{}, {"AWS_ACCESS_KEY_ID": "operator-key", "AWS_SECRET_ACCESS_KEY": "operator-secret-1"}],
    ids=["defaults", "from-env"],
)
def test_api_and_workers_use_minio_with_its_root_key(
    compose: dict[str, Any], environ: dict[str, str]
) -> None:
    services = interpolate(compose, environ)["services"]
    minio = services["minio"]["environment"]
    for name in (*API_SERVICES, *WORKER_SERVICES):
        env = services[name]["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"],
            minio["MINIO_ROOT_PASSWORD"],
        ), name
        endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
        # MinIO serves S3 on its default port 9000 (no --address in its command).
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "minio", 9000)
        assert env["AWS_REGION"]
        assert urlsplit(env["HDR_STORAGE_URL"]).scheme == "s3", name
    for value in environ.values():
        assert value in minio.values()
    # MinIO refuses root credentials shorter than 3 (user) and 8 (password) characters.
    assert len(minio["MINIO_ROOT_USER"]) >= 3 and len(minio["MINIO_ROOT_PASSWORD"]) >= 8


@pytest.mark.parametrize(
    "environ",
    [{}, {"HDR_STORAGE_URL": "s3://other/pre", "HDR_JOB_TTL_SECONDS": "3600"}],
    ids=["defaults", "from-env"],
)
def test_minio_init_creates_the_bucket_the_service_uses(
    compose: dict[str, Any], environ: dict[str, str]
) -> None:
    services = interpolate(compose, environ)["services"]
    init = services["minio-init"]
    _image_is_pinned(init["image"])
    assert init["restart"] == "no", "a one-shot job"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    script = init["entrypoint"][-1]
    assert init["entrypoint"] == ["/bin/sh", script]
    assert (REPO / mounts[script]).resolve() == CREATE_BUCKET.resolve()
    # The script sees exactly the store, TTL and key the API and the workers see.
    for name in (*API_SERVICES, *WORKER_SERVICES):
        env = services[name]["environment"]
        for variable in ("HDR_STORAGE_URL", "HDR_JOB_TTL_SECONDS", *S3_VARIABLES):
            assert init["environment"][variable] == env[variable], f"{name}: {variable}"
