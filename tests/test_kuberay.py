"""The KubeRay manifests parse, carry what KubeRay requires, and offer exactly the resources Serdab asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from serdab.cluster import load_cluster
from serdab.raycluster import ENCLAVE_RESOURCE, node_resources

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kuberay"


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterConfig"] if doc["kind"] == "RayService" else doc["spec"]


def _resources(group: dict) -> dict[str, float]:
    raw = group["rayStartParams"].get("resources")
    # KubeRay's documented form: a shell-quoted JSON string, '"{\\"name\\": 1}"'
    return json.loads(raw[1:-1].replace('\\"', '"')) if raw else {}


def test_every_manifest_is_a_kuberay_resource_with_the_required_fields() -> None:
    docs = _documents()
    assert "RayCluster" in {d["kind"] for _, d in docs}
    for name, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["metadata"]["name"], name
        spec = _cluster_spec(doc)
        head = spec["headGroupSpec"]
        assert head["template"]["spec"]["containers"][0]["image"], name
        assert isinstance(head["rayStartParams"], dict)
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
            assert group["template"]["spec"]["containers"][0]["image"], name
            for value in group["rayStartParams"].values():
                assert isinstance(value, str), f"{name}: rayStartParams values must be strings"


@pytest.mark.parametrize("manifest", ["raycluster-pipeline.yaml"])
def test_worker_groups_offer_the_resources_the_ray_executor_asks_for(manifest: str) -> None:
    cluster = load_cluster("paper")
    doc = yaml.safe_load((DEPLOY / manifest).read_text())
    groups = doc["spec"]["workerGroupSpecs"]
    offered = {}
    for group in groups:
        resources = _resources(group)
        host = next(k.removeprefix("serdab_host_") for k in resources if k.startswith("serdab_host_"))
        assert resources == node_resources(cluster, host), group["groupName"]
        offered[host] = resources
        pod = group["template"]["spec"]
        if ENCLAVE_RESOURCE in resources:  # a TEE node: selected by label, and the TEE device requested
            assert pod["nodeSelector"].get("serdab.io/tee"), group["groupName"]
            limits = pod["containers"][0]["resources"]["limits"]
            assert any(k.startswith("sgx.intel.com/") for k in limits), group["groupName"]
    assert set(offered) == {d.host for d in cluster.devices}  # every device of the cluster file has a node


def _defines(module: Path, function: str) -> bool:
    """Whether ``module`` defines ``function``, read from its source (Ray is an optional extra)."""
    import ast

    return any(isinstance(n, ast.FunctionDef) and n.name == function for n in ast.parse(module.read_text()).body)


def test_the_rayservice_applications_are_the_builders_serdab_deploys() -> None:
    root = Path(__file__).resolve().parent.parent
    doc = yaml.safe_load((DEPLOY / "rayservice-serving.yaml").read_text())
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    apps = {a["name"]: a for a in config["applications"]}
    assert {a["route_prefix"] for a in apps.values()} == {"/", "/secure"}
    from serdab.serve.ray.args import BuilderArgs  # no Ray import: what a builder accepts, unknown keys refused

    for app in apps.values():
        module, _, function = app["import_path"].partition(":")
        path = root / (module.replace(".", "/") + ".py")
        assert path.exists() and _defines(path, function), app["import_path"]
        BuilderArgs.parse(app.get("args", {})).config("enclave" if app["route_prefix"] == "/secure" else "public")
    secure = apps[next(n for n, a in apps.items() if a["route_prefix"] == "/secure")]
    enclave = next(d for d in secure["deployments"] if d["name"] == "enclave")
    assert enclave["ray_actor_options"]["resources"] == {ENCLAVE_RESOURCE: 1}
    groups = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    tee = [g for g in groups if ENCLAVE_RESOURCE in _resources(g)]
    assert tee and all(g["template"]["spec"]["nodeSelector"].get("serdab.io/tee") for g in tee)
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert {secure["args"]["image"], secure["args"]["trust"]} <= mounts  # the builder reads them on the head
