"""Shared fixtures: one export cache and one Serdab home per test session, chains opened once per model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serdab.graph import Chain, open_chain


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # CI points SERDAB_CACHE_DIR at the clone; otherwise keep tests off the user's cache.
    if "SERDAB_CACHE_DIR" not in os.environ:
        os.environ["SERDAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("serdab-cache"))
    # simulated TEE host identity, KMS data and images: never the user's ~/.serdab
    os.environ["SERDAB_HOME"] = str(tmp_path_factory.mktemp("serdab-home"))


_CHAINS: dict[str, Chain] = {}


def chain_of(name: str) -> Chain:
    """Open a zoo model once per test session (VGG16 takes seconds to export and bind)."""
    if name not in _CHAINS:
        _CHAINS[name] = open_chain(name).chain
    return _CHAINS[name]


@pytest.fixture
def lenet() -> Chain:
    return chain_of("lenet5")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def resnet18_profile():
    """A quick (3-run) ResNet18 profile: planners need realistic shapes, not precise times."""
    from serdab.profile import profile_chain

    return profile_chain(chain_of("resnet18"), "resnet18", repeat=3, warmup=1)


@pytest.fixture
def clusters_dir(repo_root: Path) -> Path:
    return repo_root / "examples" / "clusters"


# the paper cluster's and test_runtime's THREE devices, split over two Ray nodes as their hosts are;
# each node is also a host with a TEE (one enclave serving replica each) named h1, h2
RAY_NODES = (("tee1", "e1"), ("tee2", "gpu2", "cpu3"))
RAY_INGRESS = os.environ.get("SERDAB_TEST_RAY_INGRESS", "proxy")  # Ray Serve's front door: proxy or haproxy


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node Ray cluster on this machine, each node offering its devices' resources; shut down after."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (`make test-ray` installs it)")
    from ray.cluster_utils import Cluster

    from serdab.raycluster import ENCLAVE_RESOURCE, device_resource, host_resource

    def resources(k: int) -> dict[str, float]:
        return {
            **{device_resource(d): 1.0 for d in RAY_NODES[k]},
            host_resource(f"h{k + 1}"): 1.0,
            ENCLAVE_RESOURCE: 1.0,
        }

    # Ray Serve pushes autoscaling metrics every 10 s by default: too slow for a test of the rule
    for name in (
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
    ):
        os.environ[name] = "0.25"
    # `make test-ray` runs the Ray Serve tests a second time on a cluster started with Ray Serve's HAProxy
    # ingress (a cluster-wide choice: the nodes' environment), where Serdab routes through its ingress router
    if RAY_INGRESS == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": resources(0)})
        cluster.add_node(num_cpus=1, resources=resources(1))
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        cluster.wait_for_nodes()
    finally:
        os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def executor(request: pytest.FixtureRequest):
    """The executor a runtime test deploys with: None (the local default) or a Ray executor on ``ray_cluster``."""
    if request.param == "local":
        return None
    request.getfixturevalue("ray_cluster")
    from serdab.runtime.ray_executor import RayExecutor

    return RayExecutor()
