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


def _builder_args(module: Path, function: str) -> set[str]:
    """The ``args`` keys a Serve application builder reads (``args["k"]`` / ``args.get("k")``), found in its
    source without importing it (Ray is an optional extra)."""
    import ast

    tree = ast.parse(module.read_text())
    found = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    assert found is not None, f"{module.name} has no builder {function}"
    keys: set[str] = set()
    for node in ast.walk(found):
        subscript = isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "args"
        if subscript and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
        if call and getattr(node.func.value, "id", None) == "args" and isinstance(node.args[0], ast.Constant):
            keys.add(node.args[0].value)
    # helpers the builder hands ``args`` to read it too
    for helper in ("_scaling", "_router"):
        if any(isinstance(n, ast.Name) and n.id == helper for n in ast.walk(found)):
            keys |= _builder_args(module, helper)
    return keys


def test_the_rayservice_applications_are_the_builders_serdab_deploys() -> None:
    root = Path(__file__).resolve().parent.parent
    doc = yaml.safe_load((DEPLOY / "rayservice-serving.yaml").read_text())
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    apps = {a["name"]: a for a in config["applications"]}
    assert {a["route_prefix"] for a in apps.values()} == {"/", "/secure"}
    for app in apps.values():
        module, _, function = app["import_path"].partition(":")
        path = root / (module.replace(".", "/") + ".py")
        assert path.exists(), app["import_path"]
        unknown = set(app.get("args", {})) - _builder_args(path, function)
        assert not unknown, f"{app['name']}: the builder does not read {sorted(unknown)}"
    secure = apps[next(n for n, a in apps.items() if a["route_prefix"] == "/secure")]
    enclave = next(d for d in secure["deployments"] if d["name"] == "enclave")
    assert enclave["ray_actor_options"]["resources"] == {ENCLAVE_RESOURCE: 1}
    groups = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    tee = [g for g in groups if ENCLAVE_RESOURCE in _resources(g)]
    assert tee and all(g["template"]["spec"]["nodeSelector"].get("serdab.io/tee") for g in tee)
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert {secure["args"]["image"], secure["args"]["trust"]} <= mounts  # the builder reads them on the head
