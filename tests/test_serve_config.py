"""One serving configuration for both engines: checked once, and a flag one engine cannot honour refused."""

from __future__ import annotations

import pytest

from serdab.choices import RayIngress, ServeEngine
from serdab.errors import ServeConfigError
from serdab.serve.autoscale import AutoscaleConfig
from serdab.serve.config import GatewayOptions, RayOptions, ServeConfig, balancer_for
from serdab.serve.engine import ENGINES, ServingEngine, make_engine
from serdab.serve.ray.args import BuilderArgs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secure": 0, "public": 0}, "serve at least one replica"),
        ({"enclave_speed": 0}, "enclave speed"),
        ({"balancer": "fastest"}, "unknown balancer 'fastest'"),
        ({"autoscale": {"public": AutoscaleConfig(min_replicas=2, max_replicas=3)}}, "outside --autoscale 2:3"),
        ({"autoscale": {"gpu": AutoscaleConfig()}}, "autoscale kind"),
        ({"engine": "kubernetes"}, "unknown engine 'kubernetes'"),
        (
            {"engine": ServeEngine.RAY, "gateway": GatewayOptions(grpc=True, secure_port=9000)},
            "--secure-port, --grpc are the gateway engine's; --engine ray cannot honour them",
        ),
        ({"ray": RayOptions(ingress=RayIngress.HAPROXY)}, "--ray-ingress is the ray engine's; --engine gateway"),
        ({"gateway": GatewayOptions(grpc_port=9001)}, "add --grpc"),
    ],
)
def test_a_bad_configuration_is_refused_when_it_is_made(kwargs, message):
    with pytest.raises(ServeConfigError, match=message):
        ServeConfig("lenet5", **kwargs)


def test_each_engine_takes_its_own_part():
    assert ServeConfig("lenet5", gateway=GatewayOptions(grpc=True)).gateway.grpc
    ray = ServeConfig("lenet5", engine="ray", ray=RayOptions(address="auto"))
    assert ray.engine is ServeEngine.RAY and ray.ray.address == "auto"


def test_public_replicas_never_get_the_epc_aware_balancer():
    assert balancer_for("public", "epc-aware:2000:0.7:5") == "sed"
    assert balancer_for("enclave", "epc-aware:2000:0.7:5") == "epc-aware:2000:0.7:5"
    assert balancer_for("public", "least-connections") == "least-connections"


def test_builder_args_are_the_same_configuration():
    args = BuilderArgs.parse({"model": "lenet5", "replicas": 2, "autoscale": [1, 3], "balancer": "sed"})
    config = args.config("public")
    assert (config.public, config.secure, config.engine) == (2, 0, ServeEngine.RAY)
    assert config.autoscale["public"].max_replicas == 3
    with pytest.raises(ServeConfigError, match="replicaz"):
        BuilderArgs.parse({"replicaz": 2})  # a typo is an error, not silently ignored
    with pytest.raises(ServeConfigError, match="ingress"):
        BuilderArgs.parse({"ingress": "auto"})
    with pytest.raises(ServeConfigError, match="unknown balancer"):
        BuilderArgs.parse({"balancer": "fastest"}).config("enclave")


def test_every_registered_engine_is_a_serving_engine():
    from serdab.serve.service import ModelService

    assert set(ENGINES) == set(ServeEngine)
    engine = make_engine(ServeConfig("lenet5", secure=0, public=1))
    assert isinstance(engine, ModelService) and isinstance(engine, ServingEngine)
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from serdab.serve.ray.service import RayService

    assert issubclass(RayService, ServingEngine)
