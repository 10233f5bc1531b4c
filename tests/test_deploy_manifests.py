"""deploy/: the Kubernetes manifests and the container file agree with the server they run.

Parsed with PyYAML and held against the server itself: the env must be read by ``Settings``
without error, the probe paths must be routes of the real app, ports must line up from the
container file to the Service and the InferencePool, and the grace period must cover the preStop
pause, the drain and the stop that follows it. The core resources are also validated against
Kubernetes' own schemas (``kubernetes-validate`` ships them); the InferencePool and HTTPRoute are
CRDs it does not know, checked here field by field.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trillama.api.app import create_app
from trillama.api.context import Services
from trillama.config import Settings, parse_host
from trillama.store import ModelStore

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
#: After the drain: hypercorn's grace for what is left (3 s) and each runner's stop (≤ 5 s).
STOP_AFTER_DRAIN = 8


def _docs() -> dict[str, dict]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return _docs()


@pytest.fixture(scope="module")
def pod(docs) -> dict:
    return docs["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (only,) = pod["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def settings(container) -> Settings:
    env = {e["name"]: e["value"] for e in container["env"]}
    return Settings.from_env(env)  # raises ConfigError on anything the server would refuse


def _port(container: dict, name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return port


def test_every_manifest_is_known(docs):
    assert set(docs) == {"Deployment", "Service", "InferencePool", "HTTPRoute"}


def test_env_is_what_the_server_reads(container, settings):
    names = {e["name"] for e in container["env"]}
    known = set(re.findall(r'read\("([A-Z_]+)"', (REPO / "trillama" / "config.py").read_text())) | {"OLLAMA_HOST"}
    assert names <= known, names - known
    assert settings.preload and settings.preload[0].name.endswith("smollm2:135m")
    assert settings.host == "0.0.0.0"  # reachable from the kubelet and the Service
    assert settings.bundled_model is False
    assert str(settings.models_dir) in [m["mountPath"] for m in container["volumeMounts"]]


def test_ports_line_up(docs, container, settings):
    http = _port(container, "http")
    assert http == settings.port
    service = docs["Service"]["spec"]
    (port,) = service["ports"]
    assert _port(container, port["targetPort"]) == http
    (pool_port,) = docs["InferencePool"]["spec"]["targetPorts"]
    assert pool_port["number"] == http
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert f"EXPOSE {http}" in containerfile
    assert f"OLLAMA_HOST=0.0.0.0:{http}" in containerfile


def test_selectors_match_the_pods(docs, pod):
    labels = pod["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["InferencePool"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (rule,) = docs["HTTPRoute"]["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    assert backend["kind"] == "InferencePool" and backend["name"] == docs["InferencePool"]["metadata"]["name"]


def test_probes_hit_the_real_routes(container, tmp_path):
    app = create_app(Services(settings=Settings(models_dir=tmp_path), store=ModelStore(tmp_path)))
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/health", "/ready")
    assert {live["path"], ready["path"]} <= routes
    assert _port(container, live["port"]) == _port(container, ready["port"]) == _port(container, "http")
    assert "/metrics" in routes


def test_grace_period_covers_the_drain(pod, container, settings):
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 1
    assert grace >= pre_stop + settings.drain_seconds + STOP_AFTER_DRAIN, (grace, pre_stop, settings.drain_seconds)
    # the readiness probe notices a drain well within it
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= settings.drain_seconds


def test_rollout_never_drops_below_the_replica_count(docs):
    strategy = docs["Deployment"]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_resources_and_metrics_scrape(pod, container):
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == _port(container, "http")


def test_containerfile_runs_the_server_as_pid_1(container, pod):
    text = (DEPLOY / "Containerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["trillama"\]$', text, re.M)  # exec form: SIGTERM reaches it
    user = re.search(r"^USER (\d+)$", text, re.M)
    assert user and int(user.group(1)) == pod["spec"]["securityContext"]["runAsUser"]
    assert container["args"] == ["serve"]


def test_core_resources_pass_the_kubernetes_schemas(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    for kind in ("Deployment", "Service"):
        kubernetes_validate.validate(docs[kind], version, strict=True)
    broken = {**docs["Service"], "spec": {**docs["Service"]["spec"], "ports": [{"port": "eleven"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_inferencepool_shape(docs):
    pool = docs["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    spec = pool["spec"]
    assert set(spec) == {"selector", "targetPorts", "endpointPickerRef"}
    assert spec["endpointPickerRef"]["name"] and spec["endpointPickerRef"]["port"]["number"] > 0
    assert spec["endpointPickerRef"]["failureMode"] in ("FailOpen", "FailClose")


def test_host_parses_like_the_server(settings, container):
    (value,) = [e["value"] for e in container["env"] if e["name"] == "OLLAMA_HOST"]
    assert parse_host(value) == (settings.host, settings.port)
