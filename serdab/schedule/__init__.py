"""Online privacy-aware placement of CNN layers on IoT devices (seed 003, RL-PDNN).

The system model, the gymnasium environment, the SB3 DQN agent (as in the paper, and masked),
the static / greedy / search policies, stream evaluation and the exact CP-SAT optimum.
"""

from serdab.schedule.evaluate import StreamResult, feasible_exists, place_request, run_stream
from serdab.schedule.exact import ExactResult, solve_exact
from serdab.schedule.policies import GreedyPolicy, Policy, RandomPolicy, StaticPolicy
from serdab.schedule.search import SearchPolicy, search_placement
from serdab.schedule.system import DEVICE_TYPES, PRIVACY_LEVELS, Request, SystemConfig, SystemState
from serdab.schedule.workload import WORKLOADS, CnnSpec, LayerSpec, cnn_spec, workload

__all__ = [
    "DEVICE_TYPES",
    "PRIVACY_LEVELS",
    "WORKLOADS",
    "CnnSpec",
    "ExactResult",
    "GreedyPolicy",
    "LayerSpec",
    "Policy",
    "RandomPolicy",
    "Request",
    "SearchPolicy",
    "StaticPolicy",
    "StreamResult",
    "SystemConfig",
    "SystemState",
    "cnn_spec",
    "feasible_exists",
    "place_request",
    "run_stream",
    "search_placement",
    "solve_exact",
    "workload",
]
