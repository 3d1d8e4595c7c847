"""Seed 003 (RL-PDNN) figures: every policy on the four workloads x three privacy levels, and more.

Rows: accuracy (share of requests placed without breaking a constraint), the same over requests
a valid placement was shown to exist for, mean latency, shared MB per inference, decision time,
and the gap to the exact CP-SAT optimum on small instances (6 participants, 3 requests; null for
the DQN agents, trained for the 51-device system). Also: DQN reward curves (Fig. 4-5), accuracy
when varying the device count (Fig. 9) and the device mix (Fig. 10). All of it is simulation
with the paper's device figures; nothing runs on IoT hardware.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serdab.bench import new_table  # noqa: E402
from serdab.schedule import (  # noqa: E402
    PRIVACY_LEVELS,
    WORKLOADS,
    GreedyPolicy,
    SearchPolicy,
    StaticPolicy,
    SystemConfig,
    SystemState,
    place_request,
    run_stream,
    solve_exact,
    workload,
)
from serdab.schedule.agent import DqnPolicy, make_agent, train_agent  # noqa: E402
from serdab.schedule.env import PlacementEnv, observe  # noqa: E402

__all__ = ["plot", "report", "run"]


def _learning(workload_name: str, privacy: str) -> tuple[float, float]:
    """Table 1: lr 5e-4 and decay 0.99, except VGG (all levels) and CIFAR at 50%: 1e-4 and 0.995."""
    slow = workload_name == "vgg" or (workload_name == "cifar" and privacy == "half")
    return (1e-4, 0.995) if slow else (5e-4, 0.99)


def gap_to_optimal(workload_name: str, privacy: str, instances: int) -> dict[str, float | None]:
    """Mean (summed latency / optimum - 1) over small instances where the policy placed every request."""
    cnns = workload(workload_name)
    gaps: dict[str, list[float]] = {"greedy": [], "static": [], "search": []}
    for seed in range(instances):
        state = SystemState(SystemConfig(devices=6, sources=2, privacy=privacy), cnns, np.random.default_rng(seed))
        requests = [state.new_request(i % 2, 0.0) for i in range(3)]
        exact = solve_exact(state, requests, time_limit_s=20)
        if exact.status != "optimal":
            continue
        for policy in (GreedyPolicy(), StaticPolicy(), SearchPolicy()):
            trial_state, trial = copy.deepcopy(state), copy.deepcopy(requests)
            total, valid = 0.0, True
            for request in trial:
                ok, _ = place_request(trial_state, request, policy.choose)
                valid &= ok
                total += trial_state.latency(request)
            if valid:
                gaps[policy.name].append(total / exact.latency_s - 1)
    return {name: (statistics.mean(values) if values else None) for name, values in gaps.items()}


def run(
    progress: Callable[[str], None] | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    workloads: list[str] | None = None,
    steps: int | None = None,
    requests: int | None = None,
    sweeps: bool = True,
) -> dict[str, Any]:
    """DQN (paper and masked), static, greedy and search placement against the exact optimum. ``quick``:
    three workloads, 4,000 training steps, 100 requests; the others override (tests use tiny values)."""
    say = progress or (lambda _: None)
    steps = steps or (4_000 if quick else 20_000)
    requests = requests or (100 if quick else 200)
    workloads = workloads or (["lenet", "cifar", "hetero"] if quick else list(WORKLOADS))
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in workloads:
        cnns = workload(name)
        for privacy in PRIVACY_LEVELS:
            config = SystemConfig(privacy=privacy)
            lr, decay = _learning(name, privacy)
            gaps = gap_to_optimal(name, privacy, 2 if quick else 5) if name in ("lenet", "cifar") else {}
            policies = [StaticPolicy(), GreedyPolicy(), SearchPolicy()]
            for masked in (False, True):
                say(f"{name}/{privacy}: training {'masked ' if masked else ''}DQN ({steps} steps)")
                env = PlacementEnv(config, cnns, seed=seed)
                agent = make_agent(env, masked=masked, learning_rate=lr, seed=seed)
                returns = train_agent(agent, steps, warm_episodes=min(100 if quick else 300, steps // 40), decay=decay)
                curves.append({"workload": name, "privacy": privacy, "masked": masked, "returns": returns})
                policies.append(DqnPolicy(agent, masked, observe))
            for policy in policies:
                say(f"{name}/{privacy}: {policy.name} on {requests} requests")
                result = run_stream(policy, config, cnns, requests, seed=seed + 100)
                rows.append(
                    {
                        "workload": name,
                        "privacy": privacy,
                        "policy": policy.name,
                        "accuracy": result.accuracy,
                        "accuracy_feasible": result.accuracy_feasible,
                        "feasible_share": result.feasible_share,
                        "unknown_share": result.unknown_share,
                        "mean_latency_s": result.mean_latency_s,
                        "shared_mb": result.shared_mb,
                        "decision_ms": result.decision_ms,
                        "gap_to_optimal": gaps.get(policy.name),
                    }
                )
    sweep = []
    for devices in ((15, 30, 51, 60) if not quick else (15, 51)) if sweeps else ():
        for policy in (GreedyPolicy(), SearchPolicy()):
            say(f"device sweep: {devices} devices, {policy.name}")
            result = run_stream(
                policy,
                SystemConfig(devices=devices, privacy="half"),
                workload("hetero"),
                requests,
                seed=seed + 200,
                check_feasible=False,
            )
            sweep.append(
                {
                    "devices": devices,
                    "policy": policy.name,
                    "accuracy": result.accuracy,
                    "mean_latency_s": result.mean_latency_s,
                }
            )
    mixes = []
    mix_options = ((1.0, 0.0, 0.0), (1 / 3, 1 / 3, 1 / 3), (0.0, 0.5, 0.5)) if not quick else ((1 / 3, 1 / 3, 1 / 3),)
    for mix in mix_options if sweeps else ():
        say(f"device mix {mix}")
        result = run_stream(
            SearchPolicy(),
            SystemConfig(mix=mix, privacy="none"),
            workload("vgg"),
            requests // 2,
            seed=seed + 300,
            check_feasible=False,
        )
        mixes.append(
            {"mix": list(mix), "policy": "search", "accuracy": result.accuracy, "mean_latency_s": result.mean_latency_s}
        )
    return {
        "quick": quick,
        "train_steps": steps,
        "requests": requests,
        "rows": rows,
        "curves": curves,
        "device_sweep": sweep,
        "device_mix": mixes,
        "wall_s": time.perf_counter() - started,
    }


def _legend(ax, **kwargs) -> None:  # noqa: ANN001
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    configs = list(dict.fromkeys((r["workload"], r["privacy"]) for r in rows))
    fig, axes = plt.subplots(2, 3, figsize=(19, 9), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    width = 0.8 / len(policies)
    for ax, key, label in (
        (axes[0, 0], "accuracy", "accuracy (constraints met)"),
        (axes[0, 1], "mean_latency_s", "mean latency (s, log)"),
    ):
        for j, policy in enumerate(policies):
            values = [
                next((r[key] for r in rows if (r["workload"], r["privacy"]) == c and r["policy"] == policy), 0)
                for c in configs
            ]
            values = [0 if v is None or v != v else v for v in values]
            ax.bar(
                [i + (j - len(policies) / 2 + 0.5) * width for i in range(len(configs))], values, width, label=policy
            )
        ax.set_xticks(range(len(configs)), [f"{w}\n{p}" for w, p in configs], fontsize=7)
        ax.set_ylabel(label)
        if key == "mean_latency_s":
            ax.set_yscale("log")
    _legend(axes[0, 0], fontsize=7, ncol=3)
    for curve in result["curves"]:
        if curve["privacy"] in ("none", "half"):
            returns = np.asarray(curve["returns"], dtype=float)
            if len(returns) >= 50:
                smooth = np.convolve(returns, np.ones(50) / 50, mode="valid")
                tag = f"{curve['workload']}/{curve['privacy']}{' masked' if curve['masked'] else ''}"
                axes[1, 0].plot(smooth, label=tag, linewidth=0.8)
    axes[1, 0].set_xlabel("episode")
    axes[1, 0].set_ylabel("return (50-episode mean)")
    _legend(axes[1, 0], fontsize=6, ncol=2)
    for policy in dict.fromkeys(s["policy"] for s in result["device_sweep"]):
        points = [(s["devices"], s["accuracy"]) for s in result["device_sweep"] if s["policy"] == policy]
        axes[1, 1].plot(*zip(*points, strict=True), marker="o", label=policy)
    axes[1, 1].set_xlabel("participants (hetero, privacy half)")
    axes[1, 1].set_ylabel("accuracy")
    _legend(axes[1, 1], fontsize=7)
    mixes = result["device_mix"]
    labels = ["/".join(f"{share:.2f}" for share in m["mix"]) for m in mixes]
    axes[0, 2].bar(range(len(mixes)), [m["accuracy"] for m in mixes])
    axes[0, 2].set_xticks(range(len(mixes)), labels, fontsize=7)
    axes[0, 2].set_xlabel("nexus5/rpi3/stm32h7 mix\n(VGG, no privacy, search)")
    axes[0, 2].set_ylabel("accuracy")
    axes[1, 2].axis("off")
    fig.suptitle("Seed 003 (RL-PDNN) reproduction: simulated IoT system with the paper's device figures")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(result: dict[str, Any]) -> list[Any]:
    table = new_table(
        f"RL-PDNN (simulated IoT system), {result['requests']} requests per row, "
        f"DQN trained {result['train_steps']} steps",
        (
            "workload",
            "privacy",
            "policy",
            "accuracy",
            "when feasible",
            "latency s",
            "shared MB",
            "decision ms",
            "gap to optimal",
        ),
        left=("workload", "privacy", "policy"),
    )
    for r in result["rows"]:
        gap = r["gap_to_optimal"]
        table.add_row(
            r["workload"],
            r["privacy"],
            r["policy"],
            f"{r['accuracy']:.3f}",
            f"{r['accuracy_feasible']:.3f}",
            f"{r['mean_latency_s']:.4f}",
            f"{r['shared_mb']:.3f}",
            f"{r['decision_ms']:.3f}",
            "-" if gap is None else f"{100 * gap:+.1f}%",
        )
    return [table]
