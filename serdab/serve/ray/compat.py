"""Every private or version-dependent Ray API Serdab touches, in one place.

Checked against Ray 2.60.0 (the version the ``ray`` extra resolves to and CI installs; KubeRay
manifests pin it). Each entry says what it relies on and what happens where it is missing:

- the ingress-router hook (``Application._with_ingress_request_router``, private, Ray 2.60 and
  later): HAProxy asks a deployment which replica takes each request. Missing: HAProxy balances
  public replicas itself and a thin front deployment hands secure requests to ``SerdabRouter``.
- the replica a handle would choose (``handle.choose_replica(_reserve=False)`` and the selection's
  ``_replica.replica_id``, private, 2.60): what the hook answers. Only used where the hook exists.
- the request-router and autoscaling-policy APIs (``ray.serve.request_router``,
  ``AutoscalingPolicy(policy_function=...)`` and its context fields, public but alpha). Missing:
  ``serdab serve --engine ray`` refuses to start, naming the Ray version it needs.
- environment switches read by Ray Serve at start (``RAY_SERVE_*``): unknown ones are ignored by
  older Rays, which then run user code on a thread of its own (slower, same answers) and keep a
  stopping replica reachable for 30 s behind HAProxy.
- ``serve.status()``'s replica states by name (public): what ``replica_counts`` reads.
"""

from __future__ import annotations

from typing import Any

import ray
from ray import serve

__all__ = [
    "CHECKED_RAY_VERSIONS",
    "HAPROXY_ENV",
    "HAS_ROUTER_HOOK",
    "REPLICA_ENV",
    "PendingRequest",
    "RequestRouter",
    "RunningReplica",
    "chosen_replica_id",
    "running_replicas",
    "with_ingress_router",
]

CHECKED_RAY_VERSIONS = ("2.60.0",)

try:  # alpha APIs: public since Ray 2.4x, their home may move
    from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
except ImportError as exc:  # pragma: no cover - depends on the installed Ray
    raise ImportError(
        f"Serdab's Ray Serve engine needs ray.serve.request_router (Ray {CHECKED_RAY_VERSIONS[0]} was checked; "
        f"this is Ray {ray.__version__})"
    ) from exc

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
# Ray Serve runs user code and a handle's router each on an event loop of its own thread by default; every
# request then crosses threads. Serdab's replicas and router never block their loop (inference runs in a
# thread pool, the enclave is awaited), so they run on the replica's one loop, as Ray's throughput mode does.
# Behind HAProxy a stopping replica stays reachable 30 s by default so that HAProxy can drop it; Ray reloads
# HAProxy's configuration when a replica goes, so a few seconds do, and a service stops in seconds, not 30+.
REPLICA_ENV = {
    "runtime_env": {
        "env_vars": {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
        }
    }
}

HAS_ROUTER_HOOK = hasattr(serve.Application, "_with_ingress_request_router")


def with_ingress_router(served: Any, route: Any) -> Any:
    """``served`` with ``route`` (a bound deployment answering ``/internal/route``) as its ingress router."""
    if not HAS_ROUTER_HOOK:
        raise RuntimeError(f"Ray {ray.__version__} has no ingress-router hook (Ray 2.60 and later)")
    return served._with_ingress_request_router(route)


async def chosen_replica_id(handle: Any) -> str:
    """The full id of the replica ``handle``'s router would send the next request to, without sending it."""
    async with handle.choose_replica(_reserve=False) as selection:
        return str(selection._replica.replica_id.to_full_id_str())


def running_replicas() -> dict[str, int]:
    """Running replicas per deployment name, over every Serve application."""
    counts: dict[str, int] = {}
    for app in serve.status().applications.values():
        for name, deployment in app.deployments.items():
            running = sum(n for state, n in deployment.replica_states.items() if str(state).endswith("RUNNING"))
            counts[name] = counts.get(name, 0) + running
    return counts
