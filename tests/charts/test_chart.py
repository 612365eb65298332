"""charts/medstream: helm lint, rendering, offline schema validation and the deployment rules of the issue."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.cli.main import SERVICES
from services.common.topics import CATALOG
from tests.charts.tools import (
    BLOB_SERVICES,
    CHART,
    CONSUMES,
    DEPENDS,
    DISABLED_BY_DEFAULT,
    DISPATCHERS,
    EXAMPLES,
    GATEWAY_PORT_NAMES,
    GATEWAYS,
    KUBE_VERSION,
    PRODUCTION,
    VARIANTS,
    WITHOUT_KAFKA,
    by_kind,
    chart_values,
    component,
    find_tool,
    render_error,
    render_variant,
    run,
)

pytestmark = pytest.mark.unit

# Custom resources have no schema in kubernetes-validate; these come from generated models of the operators' CRDs
# (cloudcoil-models-keda 2.16, cloudcoil-models-prometheus-operator 0.80). Any other kind must be built in.
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ("cloudcoil.models.keda.v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("cloudcoil.models.prometheus_operator.v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("cloudcoil.models.prometheus_operator.v1", "PrometheusRule"),
}
TRITON_HEALTH = {"/v2/health/ready", "/v2/health/live"}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render_variant(request.param)


def deployments(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component(d): d for d in by_kind(manifests, "Deployment")}


def settings_of(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each service's ConfigMap data (its non-secret MEDSTREAM_* settings)."""
    return {
        component(cm): cm["data"]
        for cm in by_kind(manifests, "ConfigMap")
        if "MEDSTREAM_HTTP_PORT" in cm.get("data", {})
    }


def destinations(manifests: list[dict[str, Any]], name: str) -> dict[str, str]:
    """A dispatcher's destinations, name -> URL, as MEDSTREAM_DISPATCH_DESTINATIONS gives them to the service."""
    entries = json.loads(settings_of(manifests)[name]["MEDSTREAM_DISPATCH_DESTINATIONS"])
    return dict(entry.split("=", 1) for entry in entries)


def destination_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or {"https": 443, "http": 80}[parts.scheme]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels + In expressions) matches these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


# ---------------------------------------------------------------- helm lint and schemas


@pytest.mark.parametrize("values", [(), (PRODUCTION,)], ids=["default", "production"])
def test_helm_lint(values: tuple[str, ...]) -> None:
    args = [find_tool("helm"), "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    for f in values:
        args += ["-f", f]
    result = run(args)
    assert result.returncode == 0, result.stdout + result.stderr


def unknown_fields(given: Any, parsed: Any, path: str = "") -> list[str]:
    """Paths present in a manifest but dropped by the model: fields the CRD does not define."""
    if isinstance(given, dict):
        if not isinstance(parsed, dict):
            return [path or "/"]
        return [
            p
            for k, v in given.items()
            for p in ([f"{path}/{k}"] if k not in parsed else unknown_fields(v, parsed[k], f"{path}/{k}"))
        ]
    if isinstance(given, list) and isinstance(parsed, list):
        pairs = enumerate(zip(given, parsed, strict=True))
        return [p for i, (g, q) in pairs for p in unknown_fields(g, q, f"{path}/{i}")]
    return []


@pytest.mark.parametrize("kube_version", [KUBE_VERSION, kubernetes_validate.latest_version()])
def test_manifests_match_kubernetes_schemas(manifests: list[dict[str, Any]], kube_version: str) -> None:
    """Built-in kinds against the strict OpenAPI schemas kubernetes-validate ships (unknown fields are errors)."""
    errors = []
    for m in manifests:
        if (m["apiVersion"], m["kind"]) in CRD_MODELS:
            continue
        try:
            kubernetes_validate.validate(m, kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{m['kind']} {m['metadata']['name']}: no schema (not a built-in kind; add it to CRD_MODELS)")
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{m['kind']} {m['metadata']['name']} at /{'/'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)


def test_custom_resources_match_their_crds(manifests: list[dict[str, Any]]) -> None:
    import importlib

    errors = []
    for m in manifests:
        key = (m["apiVersion"], m["kind"])
        if key not in CRD_MODELS:
            continue
        module, name = CRD_MODELS[key]
        model = getattr(importlib.import_module(module), name)
        try:
            parsed = model.model_validate(m).model_dump(by_alias=True, exclude_unset=True, mode="json")
        except Exception as e:  # pydantic's ValidationError, with every failing field
            errors.append(f"{m['kind']} {m['metadata']['name']}: {e}")
            continue
        errors += [f"{m['kind']} {m['metadata']['name']}: unknown field {p}" for p in unknown_fields(m, parsed)]
    assert not errors, "\n".join(errors)


def test_example_manifests_parse() -> None:
    """The Strimzi example is applied with kubectl: it must at least be well-formed YAML with kinds and names."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "strimzi" / "kafka.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"Kafka", "KafkaNodePool", "KafkaUser", "KafkaTopic"}
    topics = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == {t.name for t in CATALOG}, "examples/strimzi/kafka.yaml must list the catalog's topics"
    for t in CATALOG:
        assert topics[t.name]["config"] == {k: int(v) if v.isdigit() else v for k, v in t.config().items()}, t.name
        assert topics[t.name]["partitions"] == (t.partitions or 3), t.name


# ---------------------------------------------------------------- what every workload must have


def test_every_service_is_in_the_chart() -> None:
    assert set(chart_values()["services"]) == set(SERVICES), "services/cli/main.py SERVICES and values.services differ"
    assert set(DEPENDS) == set(SERVICES), "tell these tests what a new service depends on"
    for name, svc in chart_values()["services"].items():
        kafka = set() if name in WITHOUT_KAFKA else {"kafka"}
        assert set(svc["uses"]) == kafka | set(DEPENDS[name]), name
        assert svc["consumerGroup"] == (f"medstream-{name}" if name in CONSUMES else ""), name
        assert svc["topics"] == list(CONSUMES.get(name, ())), name


def test_workloads_are_locked_down(manifests: list[dict[str, Any]]) -> None:
    for name, d in deployments(manifests).items():
        spec = pod_spec(d)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] in {sa["metadata"]["name"] for sa in by_kind(manifests, "ServiceAccount")}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc.get("privileged") is not True, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: resources.{kind}"
            assert c["livenessProbe"] and c["readinessProbe"], name
            # with a read-only root, whatever the process writes must be on a volume
            mounted = {v["mountPath"] for v in c["volumeMounts"]}
            assert "/tmp" in mounted, name


def test_services_probe_their_health_endpoints(manifests: list[dict[str, Any]]) -> None:
    configmaps = {cm["metadata"]["name"]: cm["data"] for cm in by_kind(manifests, "ConfigMap") if "data" in cm}
    for name, d in deployments(manifests).items():
        (c,) = pod_spec(d)["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if name == "triton":
            assert {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")} == TRITON_HEALTH
            assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
            continue
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["port"] == c["readinessProbe"]["httpGet"]["port"] == "http"
        env = configmaps[c["envFrom"][0]["configMapRef"]["name"]]
        assert ports["http"] == int(env["MEDSTREAM_HTTP_PORT"]) and env["MEDSTREAM_HTTP_HOST"] == "0.0.0.0"
        assert c["args"] == ["run", name], "the image's entrypoint is `medstream`; args pick the service"
        assert env["MEDSTREAM_STATE_DIR"] in {v["mountPath"] for v in c["volumeMounts"]}


def test_each_workload_has_service_pdb_and_network_policy(manifests: list[dict[str, Any]]) -> None:
    for name, d in deployments(manifests).items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        for kind in ("PodDisruptionBudget", "NetworkPolicy", "Service"):
            selector_of = {
                "PodDisruptionBudget": lambda o: o["spec"]["selector"],
                "NetworkPolicy": lambda o: o["spec"]["podSelector"],
                "Service": lambda o: {"matchLabels": o["spec"]["selector"]},
            }[kind]
            matching = [o for o in by_kind(manifests, kind) if selects(selector_of(o), labels)]
            if kind == "NetworkPolicy" and not any(
                p["spec"] for p in by_kind(manifests, "NetworkPolicy")
            ):  # networkPolicy.enabled=false renders none
                continue
            assert len(matching) == 1, f"{name}: {len(matching)} {kind} objects select it"


def test_no_credentials_rendered_or_in_values() -> None:
    forbidden = re.compile(r"^(password|passwd|token|secretAccessKey|accessKeyId|sasl\.jaas\.config|NEO4J_AUTH)$", re.I)

    def walk(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            found = []
            for k, v in node.items():
                literal = forbidden.match(str(k)) and isinstance(v, str | int) and v != ""
                found += [f"{path}.{k}"] if literal else walk(v, f"{path}.{k}")
            return found
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in walk(v, f"{path}[{i}]")]
        return []

    files = [CHART / "values.yaml", *EXAMPLES.rglob("values*.yaml")]
    found = [p for f in files for p in walk(yaml.safe_load(f.read_text()), f.name)]
    assert not found, f"credentials in values files: {found}"
    for variant in VARIANTS:
        manifests = render_variant(variant)
        assert not by_kind(manifests, "Secret"), "the chart must only reference existing Secrets"
        for name, data in settings_of(manifests).items():
            leaked = [k for k in data if re.search(r"PASSWORD|SECRET_ACCESS_KEY|TOKEN", k)]
            assert not leaked, f"{variant}/{name}: credentials {leaked} in a ConfigMap"
        for d in by_kind(manifests, "Deployment"):
            for c in pod_spec(d)["containers"]:
                for e in c.get("env", []):
                    if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", e["name"]):
                        assert "secretKeyRef" in e.get("valueFrom", {}), f"{variant}: {e['name']} needs a Secret"


# ---------------------------------------------------------------- network policies


def test_network_policies_allow_only_the_architecture(manifests: list[dict[str, Any]]) -> None:
    policies = {component(p): p["spec"] for p in by_kind(manifests, "NetworkPolicy")}
    if not policies:
        return
    triton_on = "triton" in deployments(manifests)
    for name, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"], name
        egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        ingress_ports = sorted(p["port"] for rule in spec["ingress"] for p in rule["ports"])
        if name == "triton":
            assert ingress_ports == ["grpc", "metrics"]
            grpc_rule = next(r for r in spec["ingress"] if r["ports"][0]["port"] == "grpc")
            (peer,) = grpc_rule["from"]
            callers = sorted(n for n, deps in DEPENDS.items() if "triton" in deps)
            assert sorted(peer["podSelector"]["matchExpressions"][0]["values"]) == callers
            assert egress_ports <= {53, 9000, 443}, "Triton reaches only DNS (and object storage for s3 models)"
            continue
        expected_in = (
            (sorted([GATEWAY_PORT_NAMES.get(name, "grpc"), "http", "http"]) if GATEWAYS[name] else ["http", "http"])
            if name in GATEWAYS
            else ["http"]
        )
        assert ingress_ports == expected_in, f"{name}: Prometheus scrapes http; only a gateway takes more"
        dependencies = {{"triton": 8001, "neo4j": 7687}[d] for d in DEPENDS[name]}
        # the imaging services' blob store on S3 (tests/charts/test_blob_store.py checks when)
        storage = {443, 9000} if name in BLOB_SERVICES else set()
        # a dispatcher's PACS and archives (tests/charts/test_imaging_dispatcher.py checks the rules)
        sent_to = (
            {destination_port(u) for u in destinations(manifests, name).values()} if name in DISPATCHERS else set()
        )
        allowed = ({53} if name in WITHOUT_KAFKA else {53, 9092, 9093}) | sent_to
        assert egress_ports - dependencies - storage <= allowed, name
        assert 53 in egress_ports and dependencies <= egress_ports, name
        if 8001 in dependencies and triton_on:
            rule = next(r for r in spec["egress"] if r["ports"][0]["port"] == 8001)
            assert rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"


# ---------------------------------------------------------------- Triton


def test_triton_gpu_scheduling_and_model_repository() -> None:
    triton = deployments(render_variant("default"))["triton"]
    spec = pod_spec(triton)
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert c["args"][0] == "tritonserver" and "--model-repository=/models" in c["args"]
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"]), "/dev/shm for python backend"

    prod = pod_spec(deployments(render_variant("production"))["triton"])
    assert prod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}

    s3 = pod_spec(deployments(render_variant("hpa-s3-cpu"))["triton"])["containers"][0]
    assert "--model-repository=s3://https://minio.storage:9000/models/medstream" in s3["args"]
    assert "--model-control-mode=poll" in s3["args"]
    assert "nvidia.com/gpu" not in s3["resources"]["limits"]
    assert {e["name"] for e in s3["env"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}

    volume = pod_spec(deployments(render_variant("volume-mtls-keda"))["triton"])
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "models" for v in volume["volumes"])


# ---------------------------------------------------------------- autoscaling


def test_consumers_scale_on_their_group_lag() -> None:
    manifests = render_variant("default")
    scaled = {component(s): s["spec"] for s in by_kind(manifests, "ScaledObject")}
    names = {component(d): d["metadata"]["name"] for d in by_kind(manifests, "Deployment")}
    assert set(scaled) == (set(CONSUMES) - DISABLED_BY_DEFAULT) | {"triton"}
    hpas = {component(h) for h in by_kind(manifests, "HorizontalPodAutoscaler")}
    assert hpas == set(GATEWAYS), "a service without a consumer group scales on CPU"
    for service, topics in CONSUMES.items():
        if service in DISABLED_BY_DEFAULT:
            continue  # the dispatcher's groups: tests/charts/test_imaging_dispatcher.py
        triggers = scaled[service]["triggers"]
        assert [t["metadata"]["topic"] for t in triggers] == list(topics)  # a trigger per topic the group reads
        for trigger in triggers:
            assert trigger["type"] == "kafka"
            # faust's app id and graph-writer's group.id are both f"medstream-{SERVICE}"
            assert trigger["metadata"]["consumerGroup"] == f"medstream-{service}"
            auth = next(
                a
                for a in by_kind(manifests, "TriggerAuthentication")
                if a["metadata"]["name"] == trigger["authenticationRef"]["name"]
            )
            assert {p["parameter"] for p in auth["spec"]["secretTargetRef"]} == {"password", "ca"}
        assert scaled[service]["scaleTargetRef"]["name"] == names[service]
    triton = scaled["triton"]["triggers"][0]
    assert triton["type"] == "prometheus" and "nv_inference_queue_duration_us" in triton["metadata"]["query"]
    for d in by_kind(manifests, "Deployment"):
        assert "replicas" not in d["spec"], "the autoscaler owns replicas"


def test_hpa_fallback() -> None:
    manifests = render_variant("hpa-s3-cpu")
    assert not by_kind(manifests, "ScaledObject")
    hpas = {component(h): h["spec"] for h in by_kind(manifests, "HorizontalPodAutoscaler")}
    assert set(hpas) == set(SERVICES) | {"triton"}
    metrics = [m["pods"]["metric"]["name"] for m in hpas["deterioration"]["metrics"] if m["type"] == "Pods"]
    assert metrics == ["medstream_consumer_lag"]
    fixed = render_variant("plaintext-external-triton")
    assert all(d["spec"]["replicas"] >= 1 for d in by_kind(fixed, "Deployment"))


def test_mtls_mounts_client_certificate() -> None:
    manifests = render_variant("volume-mtls-keda")
    d = deployments(manifests)["deterioration"]
    projected = next(v["projected"] for v in pod_spec(d)["volumes"] if v["name"] == "kafka-tls")
    paths = {i["path"] for s in projected["sources"] for i in s["secret"]["items"]}
    assert paths == {"ca.crt", "client.crt", "client.key"}
    auth = by_kind(manifests, "TriggerAuthentication")[0]["spec"]["secretTargetRef"]
    assert {p["parameter"] for p in auth} == {"ca", "cert", "key"}


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("kafka.bootstrapServers=",), "kafka.bootstrapServers is required"),
        (("triton.enabled=false",), "triton.externalGrpcUrl is required"),
        (("kafka.securityProtocol=SASL_SCRAM",), "is not one of PLAINTEXT"),
        (("kafka.sasl.existingSecret=",), "kafka.sasl.existingSecret is required"),
        (("serviceDefaults.env.KAFKA_BROKERS=x",), "only MEDSTREAM_* settings"),
        (("triton.modelRepository.source=s3",), "triton.modelRepository.bucket is required"),
        (("autoscaling.mode=vpa",), "is not one of keda, hpa, none"),
    ],
)
def test_chart_refuses_incomplete_values(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error((), sets)


# ---------------------------------------------------------------- monitoring


def test_service_monitors_find_the_metrics_ports() -> None:
    manifests = render_variant("default")
    services = by_kind(manifests, "Service")
    monitors = by_kind(manifests, "ServiceMonitor")
    assert len(monitors) == 2
    covered = set()
    for sm in monitors:
        for svc in services:
            if selects(sm["spec"]["selector"], svc["metadata"]["labels"]):
                port_names = {p["name"] for p in svc["spec"]["ports"]}
                assert all(e["port"] in port_names for e in sm["spec"]["endpoints"]), svc["metadata"]["name"]
                covered.add(component(svc))
    assert covered == (set(SERVICES) - DISABLED_BY_DEFAULT) | {"triton"}


def test_dashboard_is_valid_and_provisioned() -> None:
    dashboard = json.loads((CHART / "dashboards" / "medstream.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    (cm,) = [c for c in by_kind(render_variant("default"), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert json.loads(cm["data"]["medstream.json"]) == dashboard
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


# Triton 2.51's Prometheus metrics the dashboard, rules and autoscaler may use (Triton's metrics documentation).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
}


def defined_metrics() -> set[str]:
    """Series names of the prometheus_client metrics the services define (counters end _total, histograms _bucket)."""
    series = set()
    pattern = re.compile(r"\b(Counter|Gauge|Histogram)\(\s*\"(medstream_\w+)\"")
    for path in (CHART.parents[1] / "services").rglob("*.py"):
        for kind, name in pattern.findall(path.read_text()):
            base = name.removesuffix("_total")
            series |= {
                "Counter": {f"{base}_total"},
                "Gauge": {name},
                "Histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
            }[kind]
    return series


def test_dashboards_rules_and_autoscalers_use_real_metrics() -> None:
    manifests = render_variant("default")
    texts = {
        "dashboard": (CHART / "dashboards" / "medstream.json").read_text(),
        "rules": json.dumps([r["spec"] for r in by_kind(manifests, "PrometheusRule")]),
        "autoscaling": json.dumps([s["spec"] for s in by_kind(manifests, "ScaledObject")]),
    }
    known = defined_metrics() | TRITON_METRICS
    for where, text in texts.items():
        used = set(re.findall(r"\b(?:medstream|nv)_[a-z_]+\b", text)) - {"medstream_rules"}
        used = {u for u in used if not u.startswith(("medstream_kafka", "medstream_wearables"))}  # not metrics
        assert used <= known, f"{where} uses metrics no service or Triton exports: {sorted(used - known)}"
    dashboard = texts["dashboard"]
    for topic in (
        "medstream_consumed_total",
        "medstream_consumer_lag",
        "medstream_dead_lettered_total",
        "medstream_inference_seconds_bucket",
        "nv_inference_exec_count",
        "medstream.alerts.v1",
    ):
        assert topic in dashboard, f"the dashboard must cover {topic}"
