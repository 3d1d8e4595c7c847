"""`serdab schedule train|eval`: RL-PDNN placement of CNN layers on simulated IoT devices (seed 003)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import JsonOpt, console, err_console, progress_bar, write_json
from serdab.errors import SerdabError
from serdab.schedule import (
    PRIVACY_LEVELS,
    WORKLOADS,
    GreedyPolicy,
    Policy,
    RandomPolicy,
    SearchPolicy,
    StaticPolicy,
    SystemConfig,
    run_stream,
    workload,
)

__all__ = ["schedule_app"]

schedule_app = typer.Typer(
    help="Online privacy-aware placement of CNN layers on IoT devices (RL-PDNN).",
    no_args_is_help=True,
    add_completion=False,
)

WorkloadOpt = Annotated[str, typer.Option("--workload", help=f"Requests: {', '.join(WORKLOADS)}.")]
PrivacyOpt = Annotated[str, typer.Option(help=f"Exposure limit: {', '.join(PRIVACY_LEVELS)}.")]
DevicesOpt = Annotated[int, typer.Option(min=1, help="Participants (the paper: 51, a third of each type).")]
MixOpt = Annotated[str, typer.Option(help="Shares of nexus5,rpi3,stm32h7 participants.")]


def _config(devices: int, mix: str, privacy: str) -> SystemConfig:
    try:
        shares = tuple(float(x) for x in mix.split(","))
    except ValueError:
        raise SerdabError(f"--mix {mix!r} must be three numbers, e.g. 0.34,0.33,0.33") from None
    if len(shares) != 3:
        raise SerdabError(f"--mix {mix!r} must be three numbers, e.g. 0.34,0.33,0.33")
    total = sum(shares)
    if total <= 0:
        raise SerdabError(f"--mix {mix!r} has no devices")
    return SystemConfig(devices=devices, mix=tuple(x / total for x in shares), privacy=privacy)  # type: ignore[arg-type]


@schedule_app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="Where to save the policy (.zip) and its settings (.json beside it).")],
    workload_name: WorkloadOpt = "lenet",
    privacy: PrivacyOpt = "none",
    devices: DevicesOpt = 51,
    mix: MixOpt = "1,1,1",
    steps: Annotated[int, typer.Option(min=100, help="Layer decisions to train on.")] = 20_000,
    unmasked: Annotated[bool, typer.Option("--unmasked", help="The paper's agent: no action masking.")] = False,
    seed: int = 0,
) -> None:
    """Train the DQN agent (seed 003 Table 1) on a simulated stream of requests and save it."""
    from serdab.schedule.agent import make_agent, train_agent
    from serdab.schedule.env import PlacementEnv

    config = _config(devices, mix, privacy)
    cnns = workload(workload_name)
    env = PlacementEnv(config, cnns, seed=seed)
    agent = make_agent(env, masked=not unmasked, seed=seed)
    with progress_bar(f"training on {workload_name}/{privacy}", steps) as update:

        def tick(episodes: int, _: float) -> None:
            update(agent.num_timesteps, steps, f"{episodes} episodes")

        returns = train_agent(agent, steps, warm_episodes=200, decay=0.99, on_episode=tick)
    out.parent.mkdir(parents=True, exist_ok=True)
    agent.save(out)
    settings = {
        "workload": workload_name,
        "privacy": privacy,
        "devices": devices,
        "mix": mix,
        "masked": not unmasked,
        "steps": steps,
        "seed": seed,
    }
    out.with_suffix(".json").write_text(json.dumps(settings, indent=2) + "\n")
    tail = returns[-100:]
    kind = "unmasked" if unmasked else "masked"
    mean = sum(tail) / max(len(tail), 1)
    console.print(
        f"trained {kind} DQN: {len(returns)} episodes, mean return of the last {len(tail)}: {mean:.2f}; saved {out}"
    )


def _policy(name: str, config: SystemConfig, cnns) -> Policy:  # noqa: ANN001
    fixed = {"greedy": GreedyPolicy, "static": StaticPolicy, "search": SearchPolicy, "random": RandomPolicy}
    if name in fixed:
        return fixed[name]()
    path = Path(name)
    settings_path = path.with_suffix(".json")
    if not path.exists():
        raise SerdabError(f"unknown policy {name!r}: use greedy, static, search, random or a trained .zip")
    try:
        settings = json.loads(settings_path.read_text())
    except (OSError, ValueError):
        raise SerdabError(
            f"{settings_path} is missing or not JSON: train the policy with `serdab schedule train`"
        ) from None
    expected = (len(cnns), config.devices)
    if (len(workload(settings["workload"])), settings["devices"]) != expected:
        raise SerdabError(
            f"{path} was trained for {settings['devices']} devices and workload {settings['workload']}; "
            f"evaluate it on the same system"
        )
    from serdab.schedule.agent import DqnPolicy
    from serdab.schedule.env import observe

    return DqnPolicy.load(path, settings["masked"], observe)


@schedule_app.command("eval")
def evaluate(
    workload_name: WorkloadOpt = "lenet",
    privacy: PrivacyOpt = "none",
    devices: DevicesOpt = 51,
    mix: MixOpt = "1,1,1",
    policy: Annotated[list[str] | None, typer.Option(help="greedy, static, search, random or a trained .zip.")] = None,
    requests: Annotated[int, typer.Option(min=1, help="Requests in the stream (Poisson, 3/s).")] = 300,
    seed: int = 0,
    json_path: JsonOpt = None,
) -> None:
    """Run policies on the same simulated request stream and compare seed 003's metrics."""
    config = _config(devices, mix, privacy)
    cnns = workload(workload_name)
    names = policy or ["static", "greedy", "search"]
    table = Table(
        title=f"{workload_name} requests, privacy {privacy}, {devices} participants, {requests} requests (simulated)"
    )
    for column in ("policy", "accuracy", "when feasible", "mean latency s", "shared MB", "decision ms"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    rows = []
    for name in names:
        chosen = _policy(name, config, cnns)
        with err_console.status(f"evaluating {name}"):
            result = run_stream(chosen, config, cnns, requests, seed=seed)
        rows.append({**result.__dict__, "policy": name, "kind": result.policy})
        table.add_row(
            name,
            f"{result.accuracy:.3f}",
            f"{result.accuracy_feasible:.3f}",
            f"{result.mean_latency_s:.4f}",
            f"{result.shared_mb:.3f}",
            f"{result.decision_ms:.3f}",
        )
    console.print(table)
    write_json(json_path, {"workload": workload_name, "privacy": privacy, "devices": devices, "rows": rows})
