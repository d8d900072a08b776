"""The Kubernetes manifests build, validate, and agree with the service they deploy.

Kustomize: kubectl's built-in kustomize (``kubectl kustomize``) renders both overlays;
where kubectl is missing those tests skip, and the structural check (every path a
kustomization names exists) and the raw manifests' schema check still run.
Schemas: built-in kinds against the Kubernetes OpenAPI schemas that kubernetes-validate
ships (offline, strict: no unknown fields); KEDA's and the Prometheus Operator's custom
resources against the subset of their CRD schemas that these manifests use (below).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from service.cli import build_parser
from service.config import Settings
from service.model_repo import model_names
from service.queue.keys import GROUP, Keys
from tests.deploy.deployfiles import (
    BUCKET_LIFECYCLE,
    CREATE_BUCKET,
    K8S,
    KUBECTL,
    OVERLAYS,
    compose_document,
    expiry_days,
    find,
    generated_configmap,
    interpolate,
    kustomizations,
    lifecycle_rules,
    one,
    pod_templates,
    quantity_bytes,
    redis_bytes,
    redis_directives,
    redis_memory_needed,
    render,
    settings_configmap,
)

#: The oldest Kubernetes these manifests are for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
SECRET = "afunet-secrets"
SECRET_KEYS = {
    "HDR_API_KEYS",
    "REDIS_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "HDR_WEBHOOK_SECRET",
}
#: The blob store's key in the Secret: optional for the service (workload identity instead).
S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
WORKER_CHECK = ["hdr-service", "worker", "--check"]

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (built-in kustomize) missing")

# ---------------------------------------------------------------------- custom resources
#: The fields of KEDA's and the Prometheus Operator's CRDs these manifests use, typed as
#: their CRD schemas type them (unknown fields refused, so a typo cannot slip through).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"}
_REDIS_STREAMS_METADATA = {
    "type": "object",
    "required": ["stream"],
    "additionalProperties": False,
    "properties": {
        key: {"type": "string"}
        for key in (
            "address",
            "host",
            "port",
            "addressFromEnv",
            "hostFromEnv",
            "portFromEnv",
            "usernameFromEnv",
            "passwordFromEnv",
            "stream",
            "consumerGroup",
            "pendingEntriesCount",
            "streamLength",
            "lagCount",
            "activationLagCount",
            "activationStreamLength",
            "activationPendingEntriesCount",
            "enableTLS",
            "unsafeSsl",
            "databaseIndex",
        )
    },
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    **{
                        key: {"type": "integer", "minimum": 0}
                        for key in (
                            "pollingInterval",
                            "cooldownPeriod",
                            "initialCooldownPeriod",
                            "idleReplicaCount",
                            "minReplicaCount",
                            "maxReplicaCount",
                        )
                    },
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "behavior": {"type": "object"},  # checked as an HPA's
                                },
                            },
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "metadata": _STRING_MAP,
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string"},
                                        "kind": {
                                            "enum": [
                                                "TriggerAuthentication",
                                                "ClusterTriggerAuthentication",
                                            ]
                                        },
                                    },
                                },
                            },
                            "if": {"properties": {"type": {"const": "redis-streams"}}},
                            "then": {"properties": {"metadata": _REDIS_STREAMS_METADATA}},
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                k: {"type": "string"} for k in ("parameter", "name", "key")
                            },
                        },
                    },
                },
            },
        },
    },
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _crd_errors(doc: dict[str, Any]) -> list[str]:
    schema = CRD_SCHEMAS[doc["kind"]]
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    behavior = (doc.get("spec", {}).get("advanced") or {}).get("horizontalPodAutoscalerConfig")
    if behavior and "behavior" in behavior:  # KEDA passes it to the HPA it creates
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "check"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "maxReplicas": 2,
                "behavior": behavior["behavior"],
            },
        }
        try:
            kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"behavior: {exc.message}")
    return errors


def _validate(doc: dict[str, Any], version: str) -> None:
    if doc["kind"] in CUSTOM_KINDS:
        assert _crd_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
        return
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata']['name']} ({version}): {where}: {exc.message}"
        ) from None


# ---------------------------------------------------------------------- structure


def _named_paths(kustomization: dict[str, Any]) -> list[str]:
    paths = list(kustomization.get("resources", [])) + list(kustomization.get("components", []))
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            paths.append(patch["path"])
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get(
        "secretGenerator", []
    ):
        paths += generator.get("envs", [])
        paths += [f.split("=", 1)[-1] for f in generator.get("files", [])]
    return paths


@pytest.mark.parametrize("path", list(kustomizations()), ids=lambda p: str(p.parent.name))
def test_every_path_a_kustomization_names_exists(path: Path) -> None:
    kustomization = yaml.safe_load(path.read_text())
    for name in _named_paths(kustomization):
        target = (path.parent / name).resolve()
        assert target.exists(), f"{path}: {name} does not exist"
        assert K8S.resolve() in target.parents or target == K8S.resolve(), f"{name} leaves k8s/"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{name}: no kustomization.yaml"
    is_component = kustomization["kind"] == "Component"
    assert kustomization["apiVersion"] == (
        "kustomize.config.k8s.io/v1alpha1" if is_component else "kustomize.config.k8s.io/v1beta1"
    )


def test_overlays_include_the_base_and_both_components() -> None:
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load(
            (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
        )
        assert "../../base" in kustomization["resources"]
        assert set(kustomization["components"]) == {
            "../../components/autoscaling",
            "../../components/monitoring",
        }


def _owning_kustomization(path: Path) -> Path:
    for folder in path.parents:
        if (folder / "kustomization.yaml").is_file():
            return folder / "kustomization.yaml"
    raise AssertionError(f"{path} belongs to no kustomization")


def _raw_manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every complete resource file a kustomization lists (patches left out)."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        owner = _owning_kustomization(path)
        kustomization = yaml.safe_load(owner.read_text())
        if str(path.relative_to(owner.parent)) not in kustomization.get("resources", []):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((str(path.relative_to(K8S)), doc))
    return out


def test_no_manifest_is_left_out_of_the_kustomizations() -> None:
    named = set()
    for path in kustomizations():
        kustomization = yaml.safe_load(path.read_text())
        named |= {(path.parent / name).resolve() for name in _named_paths(kustomization)}
    for path in K8S.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in named, f"{path.relative_to(K8S)} is in no kustomization"


def test_raw_manifests_validate_against_their_schemas() -> None:
    manifests = _raw_manifests()
    assert len(manifests) >= 15
    for _, doc in manifests:
        _validate(doc, KUBERNETES_VERSIONS[0])


def test_schema_checks_reject_broken_manifests() -> None:
    deployment = next(doc for _, doc in _raw_manifests() if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(AssertionError):
        _validate(broken, KUBERNETES_VERSIONS[0])
    scaled = next(doc for _, doc in _raw_manifests() if doc["kind"] == "ScaledObject")
    trigger = {**scaled["spec"]["triggers"][0], "metadata": {"stream": "s", "streamLenght": "2"}}
    assert _crd_errors({**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}})
    monitor = next(doc for _, doc in _raw_manifests() if doc["kind"] == "ServiceMonitor")
    endpoint = {"port": 9108, "interval": "15"}
    assert _crd_errors({**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}})


# ---------------------------------------------------------------------- rendered overlays


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    if KUBECTL is None:
        pytest.skip("kubectl (built-in kustomize) is not installed")
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(overlay)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_validates(docs: tuple[dict[str, Any], ...], version: str) -> None:
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Namespace"} <= kinds
    assert kinds >= CUSTOM_KINDS
    for doc in docs:
        _validate(doc, version)


def test_everything_lands_in_one_namespace(docs: tuple[dict[str, Any], ...]) -> None:
    (namespace,) = find(docs, "Namespace")
    name = namespace["metadata"]["name"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == name, f"{doc['kind']}/{doc['metadata']['name']}"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _settings(docs: tuple[dict[str, Any], ...]) -> Settings:
    data = settings_configmap(docs)
    for key in data:
        assert key.startswith("HDR_") and key[4:].lower() in Settings.model_fields, key
    fields = {k[4:].lower(): v for k, v in data.items()}
    return Settings.model_validate({**fields, "redis_url": "redis://afunet-redis:6379/0"})


def test_settings_configmap_holds_valid_settings(docs: tuple[dict[str, Any], ...]) -> None:
    settings = _settings(docs)
    assert str(settings.model_repo) == "/opt/hdr/model_repo"
    assert settings.engine_cache is not None and str(settings.engine_cache).startswith(
        "/var/cache/hdr"
    )
    assert settings.api_host == "0.0.0.0"
    # Outside a container both default to loopback; Prometheus scrapes the pod IP.
    assert Settings().worker_metrics_host == Settings().api_host == "127.0.0.1"
    assert settings.worker_metrics_host == "0.0.0.0"


def _container(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (container,) = one(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_workers_grace_period_covers_the_drain(docs: tuple[dict[str, Any], ...]) -> None:
    drain = _settings(docs).drain_seconds
    worker = one(docs, "Deployment", "afunet-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= drain + 15


def test_api_probes_hit_its_health_routes_on_its_port(docs: tuple[dict[str, Any], ...]) -> None:
    from service.api.app import create_app

    settings = _settings(docs)
    routes = set(create_app(settings).openapi()["paths"])
    container = _container(docs, "Deployment", "afunet-api")
    (port,) = container["ports"]
    assert port["containerPort"] == settings.api_port
    assert container["args"] == ["api"]
    build_parser().parse_args(container["args"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] in routes and http["port"] == port["name"], probe
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


class _NoWorker:
    broker: Any = None
    metrics: Any = None

    def not_ready_reason(self) -> str | None:
        return None


def test_worker_probes_are_its_exec_check_and_its_health_port(
    docs: tuple[dict[str, Any], ...],
) -> None:
    from service.worker.health import build_health_app

    settings = _settings(docs)
    worker_paths = {getattr(r, "path", None) for r in build_health_app(_NoWorker()).routes}
    container = _container(docs, "Deployment", "afunet-worker")
    (port,) = container["ports"]
    assert port["containerPort"] == settings.worker_metrics_port
    assert container["args"] == ["worker"]
    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command == WORKER_CHECK, probe
        assert build_parser().parse_args(command[1:]).check
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] in worker_paths and readiness["port"] == port["name"]
    # The exec probe finds the worker's heartbeat by the worker id: the pod's host name.
    assert "HDR_WORKER_ID" not in _env(container) and "HDR_WORKER_ID" not in settings_configmap(
        docs
    )
    # Time for a first start that builds TensorRT plans.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_every_container_has_requests_limits_and_runs_unprivileged(
    docs: tuple[dict[str, Any], ...],
) -> None:
    _check_unprivileged(docs)


def _check_unprivileged(docs: tuple[dict[str, Any], ...]) -> None:
    for name, template in pod_templates(docs):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{name}: {bound}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert security["readOnlyRootFilesystem"] is True, name


def test_both_processes_reach_redis_with_the_secret_password(
    docs: tuple[dict[str, Any], ...],
) -> None:
    service = one(docs, "Service", "afunet-redis")
    (redis_port,) = service["spec"]["ports"]
    for name in ("afunet-api", "afunet-worker"):
        env = _env(_container(docs, "Deployment", name))
        url = urlsplit(env["HDR_REDIS_URL"]["value"])
        assert url.hostname == "afunet-redis" and url.port == redis_port["port"], name
        assert url.password == "$(REDIS_PASSWORD)", name
        names = list(_env(_container(docs, "Deployment", name)))
        assert names.index("REDIS_PASSWORD") < names.index("HDR_REDIS_URL"), "defined first"
    redis = _container(docs, "StatefulSet", "afunet-redis")
    assert "--requirepass" in redis["args"] and "$(REDIS_PASSWORD)" in redis["args"]


def test_secret_references_are_the_documented_ones(docs: tuple[dict[str, Any], ...]) -> None:
    used = set()
    for _, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET
                    used.add(ref["key"])
    for auth in find(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == SECRET
            used.add(ref["key"])
    assert used == SECRET_KEYS
    readme = (K8S / "README.md").read_text()
    command = re.search(r"create secret generic afunet-secrets(.*?)\n\n", readme, re.DOTALL)
    assert command, "k8s/README.md shows how to create the Secret"
    assert set(re.findall(r"--from-literal=(\w+)=", command.group(1))) == SECRET_KEYS


def test_autoscaler_watches_the_job_stream_of_these_settings(
    docs: tuple[dict[str, Any], ...],
) -> None:
    settings = _settings(docs)
    scaled = one(docs, "ScaledObject", "afunet-worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "afunet-worker")
    one(docs, "Deployment", target["name"])
    assert "replicas" not in one(docs, "Deployment", "afunet-worker")["spec"], "KEDA owns it"
    triggers = scaled["spec"]["triggers"]
    # One trigger per model the workers serve (every model of the repository: no
    # HDR_WORKER_MODELS), each on that model's stream.
    assert "HDR_WORKER_MODELS" not in settings_configmap(docs)
    keys = Keys(settings.key_prefix)
    served = model_names(Path(__file__).resolve().parents[2] / "model_repo")
    assert served == ["afunet", "classical"]
    assert sorted(t["metadata"]["stream"] for t in triggers) == [keys.stream(m) for m in served]
    assert GROUP == "workers"  # what a pendingEntriesCount/lagCount trigger would name
    namespace = scaled["metadata"]["namespace"]
    (redis_port,) = one(docs, "Service", "afunet-redis")["spec"]["ports"]
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        # Stream-length mode (no consumer group): see the ScaledObject's comment for why.
        assert "consumerGroup" not in metadata and int(metadata["streamLength"]) >= 1
        host, port = metadata["address"].rsplit(":", 1)
        assert host == f"afunet-redis.{namespace}.svc.cluster.local"
        assert int(port) == redis_port["port"]
    assert settings.unserved_model_policy == "queue"  # a waiting job is what scales a pool up
    url = _env(_container(docs, "Deployment", "afunet-worker"))["HDR_REDIS_URL"]["value"]
    assert metadata["databaseIndex"] == urlsplit(url).path.strip("/")
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"password"}
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def _pod_labels(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, str]]:
    return {name: t["metadata"]["labels"] for name, t in pod_templates(docs)}


def test_selectors_find_their_pods(docs: tuple[dict[str, Any], ...]) -> None:
    pods = _pod_labels(docs)
    expected = {
        "afunet-api": {"afunet-api"},
        "afunet-worker-metrics": {"afunet-worker"},
        "afunet-redis": {"afunet-redis"},
        "afunet-redis-headless": {"afunet-redis"},
    }
    for service in find(docs, "Service"):
        name = service["metadata"]["name"]
        selected = {
            p
            for p, labels in pods.items()
            if _selects({"matchLabels": service["spec"]["selector"]}, labels)
        }
        assert selected == expected[name], name
        container_ports = {
            port["name"]
            for workload in expected[name]
            for c in next(t for n, t in pod_templates(docs) if n == workload)["spec"]["containers"]
            for port in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{name}: {port['targetPort']}"
    for budget in find(docs, "PodDisruptionBudget"):
        name = budget["metadata"]["name"]
        assert {
            p for p, labels in pods.items() if _selects(budget["spec"]["selector"], labels)
        } == {name}
    for workload in find(docs, "Deployment") + find(docs, "StatefulSet"):
        assert _selects(
            workload["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"]
        )
    hpa = one(docs, "HorizontalPodAutoscaler", "afunet-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "afunet-api"
    assert "replicas" not in one(docs, "Deployment", "afunet-api")["spec"], "the HPA owns it"
    statefulset = one(docs, "StatefulSet", "afunet-redis")
    one(docs, "Service", statefulset["spec"]["serviceName"])


def test_service_monitor_scrapes_the_api_and_every_worker(
    docs: tuple[dict[str, Any], ...],
) -> None:
    monitor = one(docs, "ServiceMonitor", "afunet-service")
    selected = [
        s
        for s in find(docs, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    ]
    assert {s["metadata"]["name"] for s in selected} == {"afunet-api", "afunet-worker-metrics"}
    named_ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert endpoint_ports == named_ports
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def test_only_the_service_and_keda_reach_redis(docs: tuple[dict[str, Any], ...]) -> None:
    policy = one(docs, "NetworkPolicy", "afunet-redis")
    pods = _pod_labels(docs)
    protected = {p for p, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)}
    assert protected == {"afunet-redis"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    same_namespace, other = set(), []
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [6379]
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                other.append(peer)
            else:
                same_namespace |= {
                    p for p, lbl in pods.items() if _selects(peer["podSelector"], lbl)
                }
    assert same_namespace == {"afunet-api", "afunet-worker"}
    # KEDA's operator (autoscaling component) polls the stream from its namespace.
    assert [p["namespaceSelector"]["matchLabels"] for p in other] == [
        {"kubernetes.io/metadata.name": "keda"}
    ]


def test_images_are_the_dockerfile_targets(overlay: str, docs: tuple[dict[str, Any], ...]) -> None:
    api = _container(docs, "Deployment", "afunet-api")["image"]
    worker = _container(docs, "Deployment", "afunet-worker")["image"]
    assert api.rsplit(":", 1)[0].endswith("afunet-service-api")
    expected = "afunet-service-worker" if overlay == "gpu" else "afunet-service-worker-cpu"
    assert worker.rsplit(":", 1)[0].endswith(expected)
    assert _settings(docs).device == ("cuda" if overlay == "gpu" else "cpu")


def test_gpu_workers_get_one_gpu_on_nodes_of_one_compute_capability(
    overlay: str, docs: tuple[dict[str, Any], ...]
) -> None:
    spec = one(docs, "Deployment", "afunet-worker")["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    if overlay == "cpu":
        assert "nvidia.com/gpu" not in resources["limits"] and "tolerations" not in spec
        return
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in spec["tolerations"]
    selector = spec["nodeSelector"]
    assert set(selector) == {"nvidia.com/gpu.compute.major", "nvidia.com/gpu.compute.minor"}
    assert all(value.isdigit() for value in selector.values())
    # The operator's weights sit beside the image's model configs, read-only.
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["weights"]["mountPath"] == f"{_settings(docs).model_repo}/afunet/1"
    assert mounts["weights"]["readOnly"] is True
    claim = next(v for v in spec["volumes"] if v["name"] == "weights")["persistentVolumeClaim"]
    one(docs, "PersistentVolumeClaim", claim["claimName"])


def test_redis_keeps_its_data_on_a_volume(docs: tuple[dict[str, Any], ...]) -> None:
    statefulset = one(docs, "StatefulSet", "afunet-redis")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {
        m["name"]: m["mountPath"]
        for m in _container(docs, "StatefulSet", "afunet-redis")["volumeMounts"]
    }
    assert mounts[claim["metadata"]["name"]] == "/data"
    config = next(
        m
        for m in find(docs, "ConfigMap")
        if m["metadata"]["name"].startswith("afunet-redis-config")
    )
    assert "appendonly yes" in config["data"]["redis.conf"]
    assert "maxmemory-policy noeviction" in config["data"]["redis.conf"]


# ---------------------------------------------------------------------- the blob store


def test_both_processes_reach_the_blob_store(docs: tuple[dict[str, Any], ...]) -> None:
    settings = _settings(docs)
    assert settings.storage_url is not None and urlsplit(settings.storage_url).scheme == "s3"
    storage = generated_configmap(docs, "afunet-storage")
    # boto3's own variables; AWS S3 itself needs a region and no endpoint.
    assert set(storage["data"]) == {"AWS_REGION"}
    for name in ("afunet-api", "afunet-worker"):
        container = _container(docs, "Deployment", name)
        sources = [source["configMapRef"]["name"] for source in container["envFrom"]]
        assert storage["metadata"]["name"] in sources, name
        env = _env(container)
        for key in S3_KEYS:
            # Optional: without a key in the Secret, boto3 uses the pod's workload identity.
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"], ref.get("optional")) == (SECRET, key, True), name


def test_bucket_lifecycle_file_matches_the_settings(docs: tuple[dict[str, Any], ...]) -> None:
    settings = _settings(docs)
    assert settings.storage_url is not None
    prefix = urlsplit(settings.storage_url).path.strip("/")
    (rule,) = lifecycle_rules(BUCKET_LIFECYCLE.read_text(), bucket="afunet")
    assert rule["Filter"] == {"Prefix": f"{prefix}/jobs/" if prefix else "jobs/"}
    assert rule["Expiration"] == {"Days": expiry_days(settings.job_ttl_seconds)}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_api_spool_holds_the_uploads_it_takes_at_once(docs: tuple[dict[str, Any], ...]) -> None:
    settings = _settings(docs)
    spec = one(docs, "Deployment", "afunet-api")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    spooled = settings.max_concurrent_uploads * 3 * settings.max_upload_bytes
    assert quantity_bytes(volume["emptyDir"]["sizeLimit"]) >= spooled


def test_redis_memory_fits_the_job_state_of_a_ttl_window(
    docs: tuple[dict[str, Any], ...],
) -> None:
    settings = _settings(docs)
    workers = one(docs, "ScaledObject", "afunet-worker")["spec"]["maxReplicaCount"]
    conf = redis_directives(generated_configmap(docs, "afunet-redis-config")["data"]["redis.conf"])
    maxmemory = redis_bytes(conf["maxmemory"])
    assert maxmemory >= redis_memory_needed(workers, settings.job_ttl_seconds)
    resources = _container(docs, "StatefulSet", "afunet-redis")["resources"]
    limit = quantity_bytes(resources["limits"]["memory"])
    assert quantity_bytes(resources["requests"]["memory"]) == limit
    # Room for the AOF rewrite's fork (it copies the pages written meanwhile), no more.
    assert 2 * maxmemory <= limit <= 4 * maxmemory


@pytest.fixture(scope="module", params=OVERLAYS)
def minio_docs(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    """An overlay with the optional `minio` component added to its components."""
    if KUBECTL is None:
        pytest.skip("kubectl (built-in kustomize) is not installed")
    return render(str(request.param), ("minio",))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_minio_component_renders_and_validates(
    minio_docs: tuple[dict[str, Any], ...], version: str
) -> None:
    kinds = {doc["kind"] for doc in minio_docs}
    assert {"Job", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds
    one(minio_docs, "Deployment", "afunet-minio")
    for doc in minio_docs:
        _validate(doc, version)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "afunet", doc["metadata"]["name"]
    _check_unprivileged(minio_docs)


def test_minio_component_points_the_service_at_its_server(
    minio_docs: tuple[dict[str, Any], ...],
) -> None:
    storage = generated_configmap(minio_docs, "afunet-storage")["data"]
    endpoint = urlsplit(storage["AWS_ENDPOINT_URL"])
    service = one(minio_docs, "Service", str(endpoint.hostname))
    (port,) = service["spec"]["ports"]
    assert endpoint.port == port["port"]
    pods = _pod_labels(minio_docs)
    selector = {"matchLabels": service["spec"]["selector"]}
    assert {p for p, labels in pods.items() if _selects(selector, labels)} == {"afunet-minio"}
    deployment = one(minio_docs, "Deployment", "afunet-minio")
    (minio,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in minio["ports"]}
    assert ports[port["targetPort"]] == 9000, "MinIO serves S3 on 9000 unless told otherwise"
    # Its root user is the key the service signs with.
    env = _env(minio)
    for variable, key in (
        ("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"),
        ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"),
    ):
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}
    assert env["MINIO_API_STALE_UPLOADS_EXPIRY"]["value"] == "24h"
    assert minio["livenessProbe"]["httpGet"] == {"path": "/minio/health/live", "port": "s3"}
    assert minio["readinessProbe"]["httpGet"] == {"path": "/minio/health/ready", "port": "s3"}
    # One server on a ReadWriteOnce claim: the old pod goes before the new one mounts it.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    data = next(m for m in minio["volumeMounts"] if m["mountPath"] == "/data")
    claim = one(
        minio_docs,
        "PersistentVolumeClaim",
        volumes[data["name"]]["persistentVolumeClaim"]["claimName"],
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The same MinIO release as docker compose runs.
    compose = interpolate(compose_document())["services"]
    assert minio["image"] == compose["minio"]["image"]


def test_minio_setup_job_runs_the_bucket_script_with_the_service_settings(
    minio_docs: tuple[dict[str, Any], ...],
) -> None:
    job = one(minio_docs, "Job", "afunet-minio-setup")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1
    # A finished Job deletes itself, so that the next apply runs it again.
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    (container,) = spec["containers"]
    shell, script = container["command"]
    assert shell == "/bin/sh"
    folder, _, file_name = script.rpartition("/")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == folder)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config = one(minio_docs, "ConfigMap", volume["configMap"]["name"])
    assert config["data"][file_name] == CREATE_BUCKET.read_text()
    # It reads the settings and the endpoint the API and the workers read.
    api = _container(minio_docs, "Deployment", "afunet-api")
    assert container["envFrom"] == api["envFrom"]
    env = _env(container)
    for key in S3_KEYS:
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}
    compose = interpolate(compose_document())["services"]
    assert container["image"] == compose["minio-init"]["image"]


def test_only_the_service_and_its_setup_job_reach_minio(
    minio_docs: tuple[dict[str, Any], ...],
) -> None:
    policy = one(minio_docs, "NetworkPolicy", "afunet-minio")
    pods = _pod_labels(minio_docs)
    protected = {p for p, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)}
    assert protected == {"afunet-minio"}
    (port,) = one(minio_docs, "Service", "afunet-minio")["spec"]["ports"]
    allowed = set()
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [port["port"]]
        for peer in rule["from"]:
            allowed |= {p for p, labels in pods.items() if _selects(peer["podSelector"], labels)}
    assert allowed == {"afunet-api", "afunet-worker", "afunet-minio-setup"}
