from __future__ import annotations

import copy

import numpy as np
import pytest

from serdab.errors import SerdabError
from serdab.schedule import (
    CnnSpec,
    GreedyPolicy,
    LayerSpec,
    RandomPolicy,
    StaticPolicy,
    SystemConfig,
    SystemState,
    cnn_spec,
    place_request,
    solve_exact,
    workload,
)
from serdab.schedule.system import DEVICE_TYPES

TOY = CnnSpec(
    "toy",
    "toy",
    100_000,
    (
        LayerSpec("in", mults=1_000_000, weight_bytes=1000, out_bytes=100_000),
        LayerSpec("a", mults=8_000_000, weight_bytes=1000, out_bytes=1_000_000),
        LayerSpec("b", mults=8_000_000, weight_bytes=1000, out_bytes=1_000),
        LayerSpec("out", mults=1_000_000, weight_bytes=1000, out_bytes=40),
    ),
)


def test_layer_tables_follow_eq_1_to_3() -> None:
    lenet = cnn_spec("lenet")
    assert lenet.depth == 12
    assert lenet.layers[0].mults == 6 * 25 * 28 * 28  # conv 1->6, 5x5, 28x28 output: eq. 1
    assert lenet.layers[0].weight_bytes == (6 * 25 + 6) * 4  # eq. 3, 32-bit weights
    assert lenet.layers[-1].out_bytes == 10 * 4
    with pytest.raises(SerdabError, match="unknown workload 'mnist'"):
        workload("mnist")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 0}, "at least one participant"),
        ({"mix": (0.5, 0.6, 0.0)}, "summing to 1"),
        ({"privacy": "max"}, "unknown privacy level"),
    ],
)
def test_bad_configurations(kwargs, message) -> None:
    with pytest.raises(SerdabError, match=message):
        SystemConfig(**kwargs)


@pytest.mark.parametrize("privacy", ["none", "hidden2", "half"])
@pytest.mark.parametrize(
    "make_policy", [GreedyPolicy, StaticPolicy, lambda: RandomPolicy(seed=2)], ids=["greedy", "static", "random"]
)
def test_stream_invariants(make_policy, privacy) -> None:
    policy = make_policy()  # a fresh instance per case: no state shared between parametrised runs
    config = SystemConfig(devices=12, sources=3, privacy=privacy)
    cnns = workload("hetero")
    state = SystemState(config, cnns, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    clock = 0.0
    for _ in range(60):
        clock += rng.exponential(1 / config.arrival_rate)
        state.advance(clock)
        request = state.new_request(int(rng.integers(config.sources)), clock)
        exposure_before = state.exposure.copy()
        ok, _ = place_request(state, request, policy.choose)
        source = state.source_device(request.source)
        assert request.devices[0] == request.devices[-1] == source  # 4.e-f
        assert len(request.devices) == request.cnn.depth
        for free, cap in (
            (state.free_compute, state.cap_compute),
            (state.free_memory, state.cap_memory),
            (state.free_bandwidth, state.cap_bandwidth),
        ):
            assert (free >= -1e-6).all() and (free <= cap + 1e-6).all()  # never negative, never above capacity
        if ok:  # exposure: exactly the (device, layer) pairs this request used were added
            c = state.cnn_index(request.cnn)
            added = state.exposure[:, c, :] & ~exposure_before[:, c, :]
            used = {(d, k) for k, d in enumerate(request.devices[1:-1], start=1)}
            assert {tuple(x) for x in np.argwhere(added)} <= used


def test_greedy_only_picks_devices_the_constraints_allow() -> None:
    config = SystemConfig(devices=10, sources=2, privacy="hidden2")
    state = SystemState(config, workload("cifar"), np.random.default_rng(4))
    policy = GreedyPolicy()
    picked = 0
    for n in range(20):
        request = state.new_request(n % 2, 0.0)

        def checked(s, r, layer):
            nonlocal picked
            allowed = s.feasible(r, layer)
            device = policy.choose(s, r, layer)
            if allowed.any():
                assert allowed[device]
                picked += 1
            return device

        place_request(state, request, checked)
    assert picked > 50


def _toy_state(privacy: str) -> SystemState:
    state = SystemState(
        SystemConfig(devices=2, sources=1, mix=(0.5, 0.0, 0.5), privacy=privacy), (TOY,), np.random.default_rng(0)
    )
    return state


@pytest.mark.parametrize("privacy", ["none", "hidden2"])
def test_exact_solver_on_a_hand_checked_instance(privacy) -> None:
    state = _toy_state(privacy)
    nexus = [i for i in range(2) if state.types[i].name == "nexus5"][0]
    stm = 1 - nexus
    source = state.source_device(0)
    rpi, fast, slow = DEVICE_TYPES["rpi3"], DEVICE_TYPES["nexus5"], DEVICE_TYPES["stm32h7"]
    ends = 1e6 / rpi.mults_per_s * 2 + 100_000 / rpi.rate_bytes_s
    if privacy == "none":  # both middle layers on the Nexus, one hop back to the source
        expected = ends + 16e6 / fast.mults_per_s + 1_000 / fast.rate_bytes_s
        placement = [source, nexus, nexus, source]
    else:  # layer b must not run where layer a did: Nexus then STM32 beats STM32 then Nexus
        expected = (
            ends + 8e6 / fast.mults_per_s + 1e6 / fast.rate_bytes_s + 8e6 / slow.mults_per_s + 1_000 / slow.rate_bytes_s
        )
        placement = [source, nexus, stm, source]
    result = solve_exact(state, [state.new_request(0, 0.0)])
    assert result.status == "optimal"
    assert result.placements == [placement]
    assert result.latency_s == pytest.approx(expected, abs=2e-6)


def test_exact_is_never_worse_than_greedy() -> None:
    for privacy in ("none", "half"):
        state = SystemState(
            SystemConfig(devices=5, sources=2, privacy=privacy), workload("lenet"), np.random.default_rng(3)
        )
        requests = [state.new_request(i % 2, 0.0) for i in range(3)]
        exact = solve_exact(state, requests)
        greedy_state, greedy_requests = copy.deepcopy(state), copy.deepcopy(requests)
        total = 0.0
        for request in greedy_requests:
            assert place_request(greedy_state, request, GreedyPolicy().choose)[0]
            total += greedy_state.latency(request)
        assert exact.status == "optimal"
        assert exact.latency_s <= total + 2e-5  # the solver rounds each term to 1 us


def test_search_finds_a_valid_placement_whenever_one_exists_and_matches_the_optimum() -> None:
    from serdab.schedule import SearchPolicy, feasible_exists

    for privacy in ("none", "hidden2", "half"):
        state = SystemState(
            SystemConfig(devices=6, sources=2, privacy=privacy), workload("lenet"), np.random.default_rng(0)
        )
        requests = [state.new_request(i % 2, 0.0) for i in range(3)]
        exact = solve_exact(state, requests)
        total = 0.0
        policy = SearchPolicy()
        for request in requests:
            exists = feasible_exists(state, request)
            ok, _ = place_request(state, request, policy.choose)
            assert ok == bool(exists)
            total += state.latency(request)
        assert total == pytest.approx(exact.latency_s, abs=2e-5)  # the solver rounds each term to 1 us


def test_environment_follows_the_gym_api_and_masks_infeasible_devices() -> None:
    from gymnasium.utils.env_checker import check_env

    from serdab.schedule.env import PlacementEnv

    env = PlacementEnv(SystemConfig(devices=8, sources=2, privacy="half"), workload("lenet"), seed=0)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    episodes = 0
    always_allowed = True
    outcomes = []
    while episodes < 30:
        mask = env.action_masks()
        allowed = env.state.feasible(env.request, env.layer)
        assert (mask == allowed).all() if allowed.any() else mask.all()
        always_allowed &= bool(allowed.any())
        obs, reward, terminated, _, info = env.step(int(np.flatnonzero(mask)[0]))
        assert env.observation_space.contains(obs)
        if terminated:
            episodes += 1
            outcomes.append((always_allowed, info["valid"]))
            always_allowed = True
    # following the mask never breaks a constraint while an allowed device exists at every layer
    assert all(valid for allowed_throughout, valid in outcomes if allowed_throughout)
    assert sum(allowed_throughout for allowed_throughout, _ in outcomes) > 10


def test_masked_dqn_never_picks_a_masked_device_and_training_runs(tmp_path) -> None:
    from serdab.schedule.agent import DqnPolicy, make_agent, train_agent
    from serdab.schedule.env import PlacementEnv, observe

    config = SystemConfig(devices=8, sources=2, privacy="hidden2")
    env = PlacementEnv(config, workload("lenet"), seed=1)
    agent = make_agent(env, masked=True)
    returns = train_agent(agent, 1_500, warm_episodes=20, decay=0.9)
    assert len(returns) > 50
    agent.env.reset()
    for _ in range(200):  # exploring and exploiting, the sampled action is always allowed
        for rate in (1.0, 0.0):
            agent.exploration_rate = rate
            action = agent.next_action()
            assert agent.action_masks()[0][action[0]]
        agent.env.step(action)
    policy = DqnPolicy(agent, masked=True, observe=observe)
    result = run_stream_small(policy, config)
    assert result.accuracy_feasible == 1.0
    agent.save(tmp_path / "policy.zip")
    loaded = DqnPolicy.load(tmp_path / "policy.zip", True, observe)
    assert run_stream_small(loaded, config).accuracy_feasible == 1.0
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(SerdabError, match="is not a saved Serdab scheduling policy"):
        DqnPolicy.load(tmp_path / "bad.zip", True, observe)


def run_stream_small(policy, config):
    from serdab.schedule import run_stream

    return run_stream(policy, config, workload("lenet"), 40, seed=2)


def test_packing_bound_proves_what_the_search_cannot() -> None:
    from serdab.schedule.search import packing_infeasible

    free = np.array([800.0, 800.0, 560.0])
    assert packing_infeasible(np.array([604.0, 604.0, 604.0]), free)  # only two devices take a 604
    assert not packing_infeasible(np.array([604.0, 604.0, 500.0]), free)
    assert packing_infeasible(np.array([300.0] * 7), free)  # 2 + 2 + 1 places of size 300


def test_tiny_benchmark_writes_the_json_contract(tmp_path) -> None:
    from serdab.bench.rlpdnn_bench import plot, run

    result = run(quick=True, workloads=["lenet"], steps=400, requests=15, sweeps=False)
    assert {r["policy"] for r in result["rows"]} == {"static", "greedy", "search", "dqn", "dqn-masked"}
    for row in result["rows"]:
        assert {
            "workload",
            "privacy",
            "policy",
            "accuracy",
            "mean_latency_s",
            "shared_mb",
            "decision_ms",
            "gap_to_optimal",
        } <= set(row)
    search = [r for r in result["rows"] if r["policy"] == "search"]
    assert all(r["accuracy_feasible"] >= 0.99 for r in search)
    assert all(r["gap_to_optimal"] is not None and r["gap_to_optimal"] < 0.05 for r in search)
    plot(result, tmp_path / "rlpdnn.png")
    assert (tmp_path / "rlpdnn.png").stat().st_size > 10_000
