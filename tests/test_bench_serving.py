"""The serving benchmark's rule for comparing balancing policies: never in saturation."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")
from serdab.bench.serving_bench import compare_policies  # noqa: E402


def _row(policy: str, degree: str, p99: float, saturated: bool = False) -> dict:
    return {"policy": policy, "degree": degree, "p99_ms": p99, "saturated": saturated}


def test_policies_are_compared_per_degree():
    rows = [_row("round-robin", "high", 4000), _row("epc-aware", "high", 1000), _row("round-robin", "low", 800)]
    rows.append(_row("epc-aware", "low", 1000))
    assert compare_policies(rows) == pytest.approx(
        {"epc_aware_vs_round_robin_p99_high": -0.75, "epc_aware_vs_round_robin_p99_low": 0.25}
    )


def test_a_saturated_run_refuses_the_comparison():
    rows = [_row("round-robin", "high", 4000, saturated=True), _row("epc-aware", "high", 1000)]
    assert compare_policies(rows) == {"refused": "saturated runs: round-robin (high); lower the offered fraction"}
