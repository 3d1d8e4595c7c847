"""Balancing policies and the autoscaling rule on fake replicas and a fake clock (no processes)."""

from __future__ import annotations

import pytest

from serdab.errors import ServeConfigError
from serdab.serve.autoscale import AutoscaleConfig, AutoscaleState, ScaleInput, decide, parse_range
from serdab.serve.balancing import (
    BALANCERS,
    EpcAware,
    HostSample,
    LeastConnections,
    ReplicaView,
    RoundRobin,
    ShortestExpectedDelay,
    get_balancer,
)


def pick(policy, replicas, n):
    state, chosen = policy.initial(), []
    for _ in range(n):
        name, state = policy.choose(replicas, state)
        chosen.append(name)
    return chosen, state


def test_round_robin_takes_each_healthy_replica_in_turn():
    replicas = [ReplicaView("b"), ReplicaView("a"), ReplicaView("c", healthy=False)]
    chosen, _ = pick(RoundRobin(), replicas, 4)
    assert chosen == ["a", "b", "a", "b"]


def test_least_connections_picks_the_least_loaded():
    replicas = [ReplicaView("a", in_flight=3), ReplicaView("b", in_flight=1), ReplicaView("c", in_flight=2)]
    chosen, _ = pick(LeastConnections(), replicas, 2)
    assert chosen == ["b", "b"]


def test_sed_weighs_connections_by_capacity():
    # IPVS SED: (C + 1) / W -> a: 4/4 = 1.0, b: 1/0.5 = 2.0
    replicas = [ReplicaView("a", in_flight=3, weight=4.0), ReplicaView("b", in_flight=0, weight=0.5)]
    chosen, _ = pick(ShortestExpectedDelay(), replicas, 1)
    assert chosen == ["a"]


@pytest.mark.parametrize("name", list(BALANCERS))
def test_every_policy_says_none_when_no_replica_may_take_work(name):
    policy = get_balancer(name)
    replicas = [ReplicaView("a", healthy=False), ReplicaView("b", weight=0.0)]
    chosen, _ = policy.choose(replicas, policy.initial())
    assert chosen is None


def test_epc_aware_sheds_a_host_after_five_cycles_above_seventy_percent_and_restores_it():
    policy = EpcAware(boundary_pages_per_s=1000, fraction=0.7, cycles=5)
    replicas = [ReplicaView("r1", host="h1"), ReplicaView("r2", host="h2")]
    busy = {"h1": HostSample(800, True), "h2": HostSample(0, False)}  # 800 > 0.7 x 1000
    state = policy.initial()
    for _ in range(4):
        state = policy.tick(busy, state)
    assert policy.weights(state) == {}  # four cycles are not enough
    chosen, _ = pick_from(policy, replicas, state, 4)
    assert set(chosen) == {"r1", "r2"}
    state = policy.tick(busy, state)
    assert policy.weights(state) == {"h1": 0.0}
    chosen, state = pick_from(policy, replicas, state, 4)
    assert chosen == ["r2"] * 4
    # paging stops while the interfering enclave is still there (no traffic reaches r1): stays shed
    state = policy.tick({"h1": HostSample(0, True), "h2": HostSample(0, False)}, state)
    assert policy.weights(state) == {"h1": 0.0}
    # the interfering enclave is gone: weight back to 1
    state = policy.tick({"h1": HostSample(0, False), "h2": HostSample(0, False)}, state)
    assert policy.weights(state) == {}
    chosen, _ = pick_from(policy, replicas, state, 4)
    assert set(chosen) == {"r1", "r2"}


def test_epc_aware_streak_resets_below_the_trigger():
    policy = EpcAware(boundary_pages_per_s=1000, fraction=0.7, cycles=5)
    state = policy.initial()
    for rate in (800, 800, 800, 800, 600, 800, 800, 800, 800):
        state = policy.tick({"h1": HostSample(rate, True)}, state)
    assert policy.weights(state) == {}


def pick_from(policy, replicas, state, n):
    chosen = []
    for _ in range(n):
        name, state = policy.choose(replicas, state)
        chosen.append(name)
    return chosen, state


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fastest", "unknown balancer 'fastest'"),
        ("sed:3", "takes no options"),
        ("epc-aware:x", "bad epc-aware"),
        ("epc-aware:100:2", "fraction <= 1"),
    ],
)
def test_bad_balancer_specs_say_what_is_valid(spec, message):
    with pytest.raises(ServeConfigError, match=message):
        get_balancer(spec)


def test_epc_aware_options_parse():
    policy = get_balancer("epc-aware:500:0.5:3")
    assert isinstance(policy, EpcAware) and policy.trigger == 250 and policy.cycles == 3


CONFIG = AutoscaleConfig(min_replicas=1, max_replicas=3, target_utilisation=0.5, cooldown_s=10)


def test_autoscaler_adds_replicas_under_load_up_to_max():
    decision, _ = decide(
        CONFIG,
        ScaleInput(now_s=0.0, in_service=1, starting=0, total=1, utilisation=0.95, start_time_s=2.0),
        AutoscaleState(),
    )
    assert decision.delta == 1  # ceil(1 x 0.95 / 0.5) = 2
    decision, _ = decide(
        CONFIG,
        ScaleInput(now_s=0.0, in_service=2, starting=0, total=2, utilisation=1.0, start_time_s=2.0),
        AutoscaleState(),
    )
    assert decision.delta == 1  # ceil(2 x 2) = 4, capped at 3
    decision, _ = decide(
        CONFIG,
        ScaleInput(now_s=0.0, in_service=3, starting=0, total=3, utilisation=1.0, start_time_s=2.0),
        AutoscaleState(),
    )
    assert decision.delta == 0 and "at max" in decision.reason


def test_autoscaler_looks_ahead_by_the_start_time():
    state = AutoscaleState(last_utilisation=0.4, last_sample_s=0.0)
    # 0.5 now, rising 0.1/s; a 10 s enclave start sees 1.5 ahead: scale now
    decision, _ = decide(
        CONFIG, ScaleInput(now_s=1.0, in_service=1, starting=0, total=1, utilisation=0.5, start_time_s=10.0), state
    )
    assert decision.delta == 2
    # a public replica starting in 0.1 s does not need to
    decision, _ = decide(
        CONFIG, ScaleInput(now_s=1.0, in_service=1, starting=0, total=1, utilisation=0.5, start_time_s=0.1), state
    )
    assert decision.delta == 0


def test_autoscaler_removes_after_the_cooldown_and_keeps_min():
    _, state = decide(
        CONFIG,
        ScaleInput(now_s=0.0, in_service=1, starting=0, total=1, utilisation=0.95, start_time_s=1.0),
        AutoscaleState(),
    )
    decision, state = decide(
        CONFIG, ScaleInput(now_s=5.0, in_service=2, starting=0, total=2, utilisation=0.05, start_time_s=1.0), state
    )
    assert decision.delta == 0 and decision.reason == "cooling down"
    decision, state = decide(
        CONFIG, ScaleInput(now_s=11.0, in_service=2, starting=0, total=2, utilisation=0.05, start_time_s=1.0), state
    )
    assert decision.delta == -1
    decision, _ = decide(
        CONFIG, ScaleInput(now_s=30.0, in_service=1, starting=0, total=1, utilisation=0.0, start_time_s=1.0), state
    )
    assert decision.delta == 0


def test_autoscaler_does_not_count_a_shed_replica_as_capacity():
    # two replicas, one shed (weight 0): the one in service is saturated -> add one
    decision, _ = decide(
        CONFIG,
        ScaleInput(now_s=0.0, in_service=1, starting=0, total=2, utilisation=0.9, start_time_s=1.0),
        AutoscaleState(),
    )
    assert decision.delta == 1


def test_autoscale_config_names_the_bad_field():
    with pytest.raises(ValueError, match=r"max_replicas \(1\) must be >= min_replicas \(2\)"):
        AutoscaleConfig(min_replicas=2, max_replicas=1)
    assert parse_range("1:3") == (1, 3)
    with pytest.raises(ServeConfigError, match="MIN:MAX"):
        parse_range("3")
    with pytest.raises(ServeConfigError, match="MIN <= MAX"):
        parse_range("3:1")
