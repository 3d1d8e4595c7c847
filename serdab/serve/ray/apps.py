"""The two Ray Serve applications as builders a Serve config names (``import_path``):
``serdab.serve.ray.apps:public_app`` at ``/`` and ``serdab.serve.ray.apps:secure_app`` at ``/secure``.

``args`` are ``serdab.serve.ray.args.BuilderArgs`` (unknown keys refused); `serdab serve --engine
ray` calls the same builders with the same type. The balancer each kind gets is the serving
configuration's rule (``ServeConfig.balancer_for``), as at the gateway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

from serdab.choices import RayIngress
from serdab.raycluster import ENCLAVE_RESOURCE
from serdab.serve.config import balancer_for
from serdab.serve.ray.args import BuilderArgs
from serdab.serve.ray.compat import HAS_ROUTER_HOOK, REPLICA_ENV, with_ingress_router
from serdab.serve.ray.deployments import (
    FRONT_OPTIONS,
    SECURE_PREFIX,
    EnclaveModel,
    FrontInfo,
    PublicModel,
    ReplicaRoute,
    SecureFront,
)
from serdab.serve.ray.routing import SerdabAutoscaling, SerdabRouter
from serdab.tee.image import pack_image

__all__ = ["build_public", "build_secure", "public_app", "secure_app"]


def _deployment(cls: type) -> Any:
    return serve.deployment(cls)


def _scaling(args: BuilderArgs) -> dict[str, Any]:
    if args.autoscale is None:
        return {"num_replicas": args.replicas}
    low, high = args.autoscale
    policy = AutoscalingPolicy(policy_function=SerdabAutoscaling, policy_kwargs={"cooldown_s": args.cooldown_s})
    return {
        "autoscaling_config": AutoscalingConfig(
            min_replicas=low,
            max_replicas=high,
            initial_replicas=args.initial_replicas(),
            upscale_delay_s=0,
            downscale_delay_s=0,
            look_back_period_s=args.look_back_s,
            policy=policy,
        )
    }


def _router(args: BuilderArgs, kind: str) -> RequestRouterConfig:
    config: dict[str, Any] = {  # Ray's stubs type every field as a dict
        "request_router_class": SerdabRouter,
        "request_router_kwargs": {"balancer": balancer_for(kind, args.balancer)},
        "request_routing_stats_period_s": args.stats_period_s,
    }
    return RequestRouterConfig(**config)


def _info(model_name: str) -> dict[str, Any]:
    return {"model": model_name, "engine": "ray", "secure": "sealed", "secure_prefix": SECURE_PREFIX}


def _routed(served: Any, kind: str) -> Any:
    """``served`` with ``ReplicaRoute`` attached as its ingress router (Ray Serve 2.60 and later)."""
    route = _deployment(ReplicaRoute).options(name=f"{kind}-route", **FRONT_OPTIONS).bind(served)
    return with_ingress_router(served, route)


def public_app(args: dict[str, Any]) -> Any:
    """The public application (route prefix ``/``): ``model`` (zoo name or .onnx path), ``replicas``,
    optional ``autoscale`` [min, max], ``balancer``, ``threads``, ``stats_period_s``, ``cooldown_s``,
    ``look_back_s``, ``model_name``, ``ingress`` (``proxy``, Ray Serve's Python proxy, or ``haproxy``).
    With no public replica it is a front door that only answers ``/v1/gateway``."""
    return build_public(BuilderArgs.parse(args))


def build_public(args: BuilderArgs) -> Any:
    from serdab.models.load import load_model

    if not args.replicas and args.autoscale is None:
        name = args.model_name or Path(str(args.model)).stem
        front = _deployment(FrontInfo).options(name="front", ray_actor_options={"num_cpus": 0, **REPLICA_ENV})
        return front.bind(_info(name))
    args.config("public")  # checked as serdab serve checks it
    if args.model is None:
        from serdab.errors import ServeConfigError

        raise ServeConfigError("the public application needs args.model (a zoo name or an .onnx path)")
    loaded = load_model(args.model)
    name = args.model_name or loaded.name
    haproxy = args.ingress is RayIngress.HAPROXY
    # behind HAProxy without the ingress-router hook (Ray below 2.60), HAProxy balances public replicas itself
    routing = {"request_router_config": _router(args, "public")} if HAS_ROUTER_HOOK or not haproxy else {}
    deployment = _deployment(PublicModel).options(
        name="public",
        ray_actor_options={"num_cpus": 0, **REPLICA_ENV},
        max_ongoing_requests=8,
        **routing,
        **_scaling(args),
    )
    public = deployment.bind(name, loaded.proto.SerializeToString(), args.threads, _info(name))
    return _routed(public, "public") if haproxy and HAS_ROUTER_HOOK else public


def secure_app(args: dict[str, Any]) -> Any:
    """The enclave application (route prefix ``/secure``): ``image`` (the replica image directory the
    owner built and registered), ``trust`` (the owner's trust statement file: key service URL and PCRs,
    service name, replica PCRs), ``model_name``, ``replicas``, optional ``autoscale``, ``balancer``,
    ``enclave_speed``, ``threads``, ``stats_period_s``, ``stress_dir``, ``ingress``. The service CA
    comes from the key service itself, attested against the trust statement."""
    return build_secure(BuilderArgs.parse(args))


def build_secure(args: BuilderArgs) -> Any:
    from serdab.errors import ServeConfigError
    from serdab.serve.client import service_certificate
    from serdab.serve.trust import statement_coordinates

    config = args.config("enclave")
    if args.image is None or args.trust is None:
        raise ServeConfigError("the secure application needs args.image and args.trust")
    trust = json.loads(Path(args.trust).read_text())
    certificate = service_certificate(trust)[0]
    deployment = _deployment(EnclaveModel).options(
        name="enclave",
        ray_actor_options={"num_cpus": 0, "resources": {ENCLAVE_RESOURCE: 1}, **REPLICA_ENV},
        max_ongoing_requests=8,
        request_router_config=_router(args, "enclave"),
        **_scaling(args),
    )
    enclaves = deployment.bind(
        args.model_name or trust["model"],
        pack_image(Path(args.image)),
        statement_coordinates(trust).to_argv(),
        certificate["ca_pem"],
        config.enclave_speed,
        config.threads,
        args.stress_dir,
        balancer_for("enclave", args.balancer),
        str(trust.get("evidence") or "aws-nitro"),
    )
    if args.ingress is not RayIngress.HAPROXY:
        return enclaves
    if HAS_ROUTER_HOOK:
        return _routed(enclaves, "enclave")
    # HAProxy balances an ingress itself: SerdabRouter chooses the enclave behind a front deployment
    return _deployment(SecureFront).options(name="secure-front", **FRONT_OPTIONS).bind(enclaves)
