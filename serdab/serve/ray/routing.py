"""The gateway's policies on Ray Serve: its balancing policy as a request router, its autoscaling
rule as an autoscaling policy (one home each: ``serdab.serve.balancing`` and ``serdab.serve.autoscale``)."""

from __future__ import annotations

import time
from typing import Any

from serdab.serve.autoscale import AutoscaleConfig, AutoscaleState, ScaleInput, decide
from serdab.serve.balancing import ReplicaView, get_balancer
from serdab.serve.ray.compat import PendingRequest, RequestRouter, RunningReplica

__all__ = ["SerdabAutoscaling", "SerdabRouter"]


class SerdabRouter(RequestRouter):
    """The gateway's balancing policy as a Ray Serve request router.

    Replicas report their host, requests in flight and the weight the policy's monitoring cycle
    gave their host (``record_routing_stats``, one cycle per stats period in each enclave replica),
    so every router, one per proxy and per handle, sheds the same hosts. Ray Serve forwards routing
    stats every second or two, so a host is shed that much later than at the gateway. If every
    candidate is shed the request still goes to one: Ray Serve would otherwise retry it forever,
    where the gateway answers 503.
    """

    def initialize_state(self, balancer: str = "sed", **_: Any) -> None:
        self.policy = get_balancer(balancer)
        self.state = self.policy.initial()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        views = []
        for replica in candidate_replicas:
            stats = replica.routing_stats or {}
            views.append(
                ReplicaView(
                    replica.replica_id.unique_id,
                    str(stats.get("host", replica.node_id)),
                    int(stats.get("in_flight", 0)),
                    float(stats.get("weight", 1.0)),
                )
            )
        chosen, self.state = self.policy.choose(views, self.state)
        if chosen is None:
            return [candidate_replicas]
        return [[r for r in candidate_replicas if r.replica_id.unique_id == chosen]]


class SerdabAutoscaling:
    """The gateway's autoscaling rule (``serdab.serve.autoscale.decide``) as a Ray Serve autoscaling policy.

    Utilisation is the mean number of requests in flight per replica, capped at 1 (a one-thread
    model server is busy whenever it holds a request); replicas Ray is still starting count as
    starting, so no scale-down happens under them.
    """

    def __init__(
        self,
        target_utilisation: float = 0.6,
        tolerance: float = 0.1,
        cooldown_s: float = 15.0,
        start_time_s: float = 1.0,
    ) -> None:
        self.target = target_utilisation
        self.tolerance = tolerance
        self.cooldown_s = cooldown_s
        self.start_time_s = start_time_s

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        config = AutoscaleConfig(
            min_replicas=ctx.capacity_adjusted_min_replicas,
            max_replicas=max(1, ctx.capacity_adjusted_max_replicas),
            target_utilisation=self.target,
            tolerance=self.tolerance,
            cooldown_s=self.cooldown_s,
        )
        running = len(ctx.running_replicas)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        utilisation = min(1.0, float(ctx.total_num_requests) / running) if running else 0.0
        saved = ctx.policy_state or {}
        state = AutoscaleState(
            saved.get("last_change_s", float("-inf")), saved.get("last_utilisation"), saved.get("last_sample_s")
        )
        target = max(ctx.target_num_replicas, running)
        decision, state = decide(
            config,
            ScaleInput(
                now_s=now,
                in_service=running,
                starting=max(0, target - running),
                total=target,
                utilisation=utilisation,
                start_time_s=self.start_time_s,
            ),
            state,
        )
        desired = max(config.min_replicas, min(config.max_replicas, target + decision.delta))
        return desired, {
            "last_change_s": state.last_change_s,
            "last_utilisation": state.last_utilisation,
            "last_sample_s": state.last_sample_s,
            "reason": decision.reason,
        }
