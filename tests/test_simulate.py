from __future__ import annotations

import pytest

from serdab.cluster import Cluster, load_cluster
from serdab.plan import CostModel, Placement, PlanRequest, Stage, Workload, get_planner
from serdab.plan.simulate import simulate
from serdab.privacy.policy import allowed_starts, parse_policy
from serdab.testing import synthetic_workload

STRATEGIES = ["optimal", "serdab", "single-tee", "neurosurgeon", "tee-gpu", "two-tees"]


def _request(workload: Workload, cluster: Cluster, chunk: int, replicate: bool = False) -> PlanRequest:
    allowed = tuple(allowed_starts(parse_policy("resolution:20"), workload.boundary_resolution))
    return PlanRequest(CostModel(workload, cluster), allowed, chunk, "resolution:20", replicate=replicate)


@pytest.mark.parametrize("cluster_name", ["paper", "single-tee", "edge-cloud"])
@pytest.mark.parametrize("chunk", [1, 10, 1000])
def test_simulation_matches_the_formula(resnet18_profile, clusters_dir, cluster_name, chunk) -> None:
    cluster = load_cluster(clusters_dir / f"{cluster_name}.yaml")
    checked = 0
    for workload in (Workload.from_profile(resnet18_profile), synthetic_workload(40, seed=3)):
        request = _request(workload, cluster, chunk)
        for strategy in STRATEGIES:
            placement = get_planner(strategy).plan(request)
            if placement is None:
                continue
            formula = request.evaluate(placement).chunk_time_s
            assert simulate(request.costs, placement, chunk).chunk_time_s == pytest.approx(formula, rel=0.01), strategy
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("chunk", [1, 1000])
def test_replicated_plans_match_at_one_frame_and_long_streams(resnet18_profile, clusters_dir, chunk) -> None:
    # At small n > 1 round robin is lumpier than the fluid formula (docs/plan.md gives the gap).
    for name in ("paper", "edge-cloud"):
        request = _request(Workload.from_profile(resnet18_profile), load_cluster(clusters_dir / f"{name}.yaml"), chunk)
        whole = Stage(("tee1", "tee2") if name == "paper" else ("nitro-a", "nitro-b"), 0, request.costs.blocks - 1)
        for placement in (get_planner("optimal").plan(request), Placement("both", (whole,))):
            formula = request.evaluate(placement).chunk_time_s
            assert simulate(request.costs, placement, chunk).chunk_time_s == pytest.approx(formula, rel=0.01)


def test_simulation_sees_a_link_the_formula_counts_twice(clusters_dir) -> None:
    # tee1 -> tee2 -> e1 -> gpu2 crosses e1->e2 twice; the formula treats each hop as its own channel
    cluster = load_cluster(clusters_dir / "paper.yaml")
    workload = synthetic_workload(8, seed=1)
    request = _request(workload, cluster, 1000)
    placement = Placement(
        "x", (Stage(("tee1",), 0, 0), Stage(("tee2",), 1, 1), Stage(("e1",), 2, 2), Stage(("gpu2",), 3, 7))
    )
    cost = request.evaluate(placement)
    out_of_e1 = [h for h in cost.hops if h.src[0] in ("tee1", "e1")]
    assert cost.period_s == max(h.period_s for h in out_of_e1)  # the shared link is the bottleneck
    simulated = simulate(request.costs, placement, 1000)
    assert simulated.chunk_time_s == pytest.approx(cost.latency_s + 999 * sum(h.period_s for h in out_of_e1), rel=0.01)


def test_frames_arriving_slowly_never_queue(resnet18_profile, clusters_dir) -> None:
    request = _request(Workload.from_profile(resnet18_profile), load_cluster(clusters_dir / "paper.yaml"), 50)
    placement = get_planner("optimal").plan(request)
    cost = request.evaluate(placement)
    sim = simulate(request.costs, placement, 50, interval_s=2 * cost.latency_s)
    assert sim.mean_latency_s == pytest.approx(cost.latency_s)
    assert sim.chunk_time_s == pytest.approx(49 * 2 * cost.latency_s + cost.latency_s)
    assert sim.busy_s["tee1"] == pytest.approx(50 * cost.stages[0].compute_s)
