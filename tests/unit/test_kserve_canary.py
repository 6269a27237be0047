"""The KServe canary overlays, deploy/kubernetes/kserve-canary and kserve-canary-promoted,
rendered by ``kubectl kustomize`` and checked offline like deploy/kubernetes/kserve
(tests/unit/test_kubernetes.py; both use tests/kubernetes_support.py).

The canary is KServe 0.20's ``spec.canary`` of RawDeployment (Standard) mode: a predictor of its
own, named, beside the stable one. Built-in kinds (the canary's Job) go through
``kubernetes-validate``; the InferenceService is a CRD without a schema there, so these tests
check its structure against what KServe's admission webhook accepts and against the stable
InferenceService. What KServe then does with it (pods, traffic split, promotion) needs a cluster
and is not tested here.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.kubernetes_support import (
    KSERVE,
    KUBERNETES,
    MODEL_REPOSITORY_IMAGE,
    REPO_ROOT,
    container_images,
    image_name,
    kustomize,
    kustomize_images,
    one,
    validate,
    yaml_documents,
)

CANARY = KUBERNETES / "kserve-canary"
PROMOTED = KUBERNETES / "kserve-canary-promoted"
SERVICE = "resnet18"
CANARY_JOB = "resnet18-model-repository-v2"
STABLE_JOB = "resnet18-model-repository"
# Fields KServe 0.20's webhook refuses on a canary predictor: a canary has a fixed replica count
# derived from minReplicas and trafficPercent.
AUTOSCALING_FIELDS = {"maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"}
# The pattern of predictor.name in KServe's CRD: it becomes part of a Deployment's name.
PREDICTOR_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"
DOC_SECTION = "### A canary on KServe"


@pytest.fixture(scope="module")
def renders() -> dict[Path, list[dict]]:
    """What ``kubectl kustomize`` renders from the stable, canary and promoted kustomizations."""
    return {directory: kustomize(directory) for directory in (KSERVE, CANARY, PROMOTED)}


@pytest.fixture(scope="module")
def stable(renders: dict[Path, list[dict]]) -> list[dict]:
    return renders[KSERVE]


@pytest.fixture(scope="module")
def canary(renders: dict[Path, list[dict]]) -> list[dict]:
    return renders[CANARY]


def _service(documents: list[dict]) -> dict:
    services = [d for d in documents if d["kind"] == "InferenceService"]
    assert len(services) == 1, f"{len(services)} InferenceServices"
    assert services[0]["metadata"]["name"] == SERVICE
    return services[0]


def _the_canary(documents: list[dict]) -> dict:
    """The one entry of ``spec.canary``."""
    entries = _service(documents)["spec"].get("canary", [])
    assert len(entries) == 1, f"{len(entries)} canaries"
    return entries[0]


def _pvc_uri(uri: str) -> tuple[str, str]:
    """``pvc://CLAIM/PATH`` as (claim, path)."""
    assert uri.startswith("pvc://"), uri
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path


def _without(predictor: dict, *fields: str) -> dict:
    """``predictor`` without ``fields`` and without its model's storageUri."""
    rest = {k: v for k, v in copy.deepcopy(predictor).items() if k not in fields}
    del rest["model"]["storageUri"]
    return rest


def _job_pod(documents: list[dict], name: str) -> dict:
    return one(documents, "Job", name)["spec"]["template"]["spec"]


def _doc_section() -> str:
    text = DEPLOYMENT_DOC.read_text()
    assert DOC_SECTION in text, f"docs/deployment.md has no {DOC_SECTION!r}"
    section = text.split(DOC_SECTION, 1)[1]
    return re.split(r"^#{2,3} ", section, maxsplit=1, flags=re.M)[0]


@pytest.mark.parametrize("directory", [CANARY, PROMOTED], ids=lambda path: path.name)
def test_canary_kustomizations_validate_and_land_in_the_one_namespace(
    directory: Path, renders: dict[Path, list[dict]]
) -> None:
    documents = renders[directory]
    for document in documents:
        validate(document, f"kustomize {directory.relative_to(REPO_ROOT)}")
    assert {d["metadata"].get("namespace") for d in documents} == {"resnet18-triton"}


@pytest.mark.parametrize("directory", [CANARY, PROMOTED], ids=lambda path: path.name)
def test_canary_kustomizations_keep_the_stable_objects_and_add_only_the_canarys_job(
    directory: Path, renders: dict[Path, list[dict]], stable: list[dict]
) -> None:
    documents = renders[directory]

    def others(docs: list[dict]) -> list[dict]:
        return [
            d
            for d in docs
            if d["kind"] != "InferenceService" and d["metadata"]["name"] != CANARY_JOB
        ]

    assert others(documents) == others(stable)
    assert [d["kind"] for d in documents if d["metadata"]["name"] == CANARY_JOB] == ["Job"]
    service, stable_service = _service(documents), _service(stable)
    assert service["metadata"] == stable_service["metadata"]
    annotations = service["metadata"]["annotations"]
    # KServe's defaulting webhook turns RawDeployment into Standard, the only mode its canary
    # validation accepts.
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_canary_sends_ten_percent_through_spec_canary_and_not_canary_traffic_percent(
    canary: list[dict], stable: list[dict]
) -> None:
    entry = _the_canary(canary)
    assert entry["trafficPercent"] == 10
    assert set(entry) == {"trafficPercent", "predictor"}
    # Serverless-only: RawDeployment ignores it and would roll the new repository out to every pod.
    assert "canaryTrafficPercent" not in yaml.safe_dump(_service(canary))
    # The stable predictor is the one ../kserve renders, untouched.
    assert _service(canary)["spec"]["predictor"] == _service(stable)["spec"]["predictor"]


def test_canary_predictor_is_the_stable_one_with_its_own_name_and_storage(
    canary: list[dict],
) -> None:
    predictor = _service(canary)["spec"]["predictor"]
    candidate = _the_canary(canary)["predictor"]
    name = candidate["name"]
    assert PREDICTOR_NAME.match(name) and name != predictor.get("name"), name
    assert not AUTOSCALING_FIELDS & set(candidate), "KServe refuses autoscaling on a canary"
    # Allowed, but KServe's default, a share of the stable minReplicas (1 pod), is what docs say.
    assert "minReplicas" not in candidate
    assert _without(candidate, "name") == _without(predictor, "minReplicas", *AUTOSCALING_FIELDS)
    stable_claim, stable_path = _pvc_uri(predictor["model"]["storageUri"])
    claim, path = _pvc_uri(candidate["model"]["storageUri"])
    # The same volume, another folder: the stable pods mount theirs in place (a subPath).
    assert claim == stable_claim and path != stable_path
    assert not path.startswith(f"{stable_path}/") and not stable_path.startswith(f"{path}/")


def test_canary_job_fills_the_folder_the_canary_reads_from_the_new_repository_image(
    canary: list[dict],
) -> None:
    claim, path = _pvc_uri(_the_canary(canary)["predictor"]["model"]["storageUri"])
    pod = copy.deepcopy(_job_pod(canary, CANARY_JOB))
    stable_pod = copy.deepcopy(_job_pod(canary, STABLE_JOB))
    copier, stable_copier = pod["containers"][0], stable_pod["containers"][0]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mount = copier["volumeMounts"][0]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
    assert copier["command"] == ["cp", "-R", "/model_repository/.", f"{mount['mountPath']}/{path}/"]
    assert image_name(copier["image"]) == MODEL_REPOSITORY_IMAGE
    assert copier["image"] != stable_copier["image"]
    # Everything else as the stable Job: user, security, resources, volume.
    for container in (copier, stable_copier):
        del container["image"], container["command"]
    assert pod == stable_pod


def test_canary_image_entry_is_the_only_one_and_retags_only_the_canarys_job(
    tmp_path: Path, canary: list[dict]
) -> None:
    entries = kustomize_images(CANARY)
    written = {
        image_name(image)
        for path in CANARY.glob("*.yaml")
        if path.name != "kustomization.yaml"
        for image in container_images(yaml_documents(path.read_text()))
    }
    assert written == set(entries)
    assert all(entry["newName"] == MODEL_REPOSITORY_IMAGE for entry in entries.values())
    # A copy retagged for a registry: the canary's Job moves, the stable objects do not.
    copied = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copied)
    kustomization = yaml.safe_load((copied / CANARY.name / "kustomization.yaml").read_text())
    for entry in kustomization["images"]:
        entry["newName"] = f"registry.example:5000/team/{MODEL_REPOSITORY_IMAGE}"
        entry["newTag"] = "9.9.9"
    (copied / CANARY.name / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    retagged = kustomize(copied / CANARY.name)
    moved = _job_pod(retagged, CANARY_JOB)["containers"][0]["image"]
    assert moved == f"registry.example:5000/team/{MODEL_REPOSITORY_IMAGE}:9.9.9"
    assert [d for d in retagged if d["metadata"]["name"] != CANARY_JOB] == [
        d for d in canary if d["metadata"]["name"] != CANARY_JOB
    ]


def test_promotion_makes_the_canarys_predictor_the_stable_one_and_drops_the_canary(
    renders: dict[Path, list[dict]], canary: list[dict], stable: list[dict]
) -> None:
    service = _service(renders[PROMOTED])
    assert "canary" not in service["spec"]
    predictor = service["spec"]["predictor"]
    candidate = _the_canary(canary)["predictor"]
    # The name keeps the canary's Deployment (KServe hands it over); the storage is the canary's.
    assert predictor["name"] == candidate["name"]
    assert predictor["model"]["storageUri"] == candidate["model"]["storageUri"]
    before = _service(stable)["spec"]["predictor"]
    assert _without(predictor, "name") == _without(before)


def test_docs_commands_name_the_canary_kustomizations_and_select_only_the_canarys_job(
    canary: list[dict],
) -> None:
    section = _doc_section()
    # The version that has spec.canary, in the docs and beside the commands in the kustomization.
    assert "KServe 0.20 or later" in section
    assert "KServe 0.20 or later" in " ".join((CANARY / "kustomization.yaml").read_text().split())
    applied = set(re.findall(r"kubectl apply -k (\S+)", section))
    assert applied == {
        str(directory.relative_to(REPO_ROOT)) for directory in (KSERVE, CANARY, PROMOTED)
    }
    # The first apply creates the Job alone, so that the folder is filled before the canary starts.
    selectors = re.findall(r"kubectl apply -k \S+ -l (\S+)=(\S+)", section)
    assert len(selectors) == 1
    key, value = selectors[0]
    selected = [d for d in canary if d["metadata"].get("labels", {}).get(key) == value]
    assert [(d["kind"], d["metadata"]["name"]) for d in selected] == [("Job", CANARY_JOB)]
    assert f"job/{CANARY_JOB}" in section
