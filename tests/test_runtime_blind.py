"""Blinded stages through the runtime (issue 28): an enclave stage whose linear layers an untrusted helper
computes on masked values, end to end through the manager, as measured as predicted, and a helper that
answers wrongly caught before any frame is answered with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serdab.blind.profile import cached_blinding
from serdab.blind.quantize import quantize_model
from serdab.cluster import load_cluster
from serdab.graph.stages import extract_stage
from serdab.onnxrt import make_session
from serdab.plan import BlindCosts
from serdab.profile import cached_profile
from serdab.runtime.frames import open_source
from serdab.runtime.manager import ApplicationManager, RunOptions
from tests.conftest import chain_of

DESKTOP = """
source: tee1
devices:
  - {name: tee1, kind: tee, trusted: true,  host: h1, speed: 0.5, memory: 93MiB, paging_factor: 5.0}
  - {name: gpu1, kind: gpu, trusted: false, host: h1, speed: 4.0, memory: 8GiB}
"""


@pytest.fixture(scope="module")
def lenet_costs():
    chain = chain_of("lenet5")
    profile, _ = cached_profile(chain, "lenet5", repeat=3, warmup=1)
    return chain, profile, cached_blinding(chain, profile, repeat=1)


@pytest.fixture
def desktop(tmp_path: Path):
    path = tmp_path / "desktop.yaml"
    path.write_text(DESKTOP)
    return load_cluster(path)


def _run(lenet_costs, cluster, frames: int, mode: str, helper: str | None = None, **options):
    chain, profile, blinding = lenet_costs
    blind = BlindCosts.from_profile(blinding, mode, integrity=True, helper=helper)
    manager = ApplicationManager(chain, "lenet5", profile, cluster, RunOptions(blind=blind, **options))
    lines: list[dict] = []
    summary = manager.run(open_source(f"synthetic:{frames}", chain.input_shape).frames(), on_result=lines.append)
    return chain, summary, lines


def test_a_blinded_stage_then_its_helper_in_plaintext_answers_every_frame_exactly(lenet_costs, desktop) -> None:
    # Origami's shape: the enclave blinds blocks 0-5 on gpu1, which then runs 6-11 in plaintext
    chain, summary, lines = _run(
        lenet_costs, desktop, 5, "pool", chunk=5, keep_outputs=True, placement="tee1(blinded:gpu1)[0-5] -> gpu1[6-11]"
    )
    assert summary.placements == ["tee1(blinded:gpu1)[0-5] -> gpu1[6-11]"]
    head = quantize_model(extract_stage(chain, 0, 5), "head")
    tail = make_session(extract_stage(chain, 6, 11))
    for frame, line in zip(open_source("synthetic:5", chain.input_shape).frames(), lines, strict=True):
        # the blinded head equals the quantised head bit for bit, so the float tail sees the same tensor
        expected = tail.run(None, {tail.get_inputs()[0].name: head.dequantised(frame.tensor).astype(np.float32)})[0]
        assert line["frame"] == frame.id
        assert np.array_equal(np.asarray(line["outputs"][-1], dtype=np.float32), expected)
        assert [s["device"] for s in line["stages"]] == ["tee1", "gpu1"]
    # emulated: the blinded stage (enclave share + helper share + round trips) measured as the cost model says
    stage = summary.chunks[-1].stages[0]
    assert stage.measured_ms == pytest.approx(stage.predicted_ms, rel=0.25)
    hops = {(h.src[0], h.dst[0]) for h in summary.hops}
    assert ("tee1", "gpu1") in hops  # the frame hop; the masked round trips travel on the helper's own links


def test_a_helper_that_answers_wrongly_is_caught_and_planned_around(lenet_costs, desktop) -> None:
    chain, summary, lines = _run(
        lenet_costs,
        desktop,
        6,
        "in-stream",
        chunk=3,
        native=True,
        keep_outputs=True,
        fault_budget=0,
        placement="tee1(blinded:gpu1)[0-11]",
        tamper={"gpu1": 2},
    )
    assert [line["frame"] for line in lines] == list(range(6))  # every frame answered once
    assert summary.faults and summary.faults[0]["device"] == "gpu1"
    assert "wrong answer" in summary.faults[0]["reason"] and summary.faults[0]["frame"] == 2
    assert summary.placements == ["tee1(blinded:gpu1)[0-11]", "tee1[0-11]"]
    whole = make_session(chain.model)
    quantised = quantize_model(chain.model, "lenet5")
    for frame, line in zip(open_source("synthetic:6", chain.input_shape).frames(), lines, strict=True):
        out = np.asarray(line["outputs"][-1], dtype=np.float32)
        if frame.id < 2:  # blinded and checked: the quantised model's answer
            assert np.array_equal(out, quantised.dequantised(frame.tensor).astype(np.float32))
        else:  # never the tampered answer: the frame was answered by the re-planned enclave, in floats
            assert np.abs(out - whole.run(None, {chain.input_name: frame.tensor})[0]).max() <= 1e-5


def test_outsourced_w_r_runs_beside_the_gpu_and_a_wrong_w_r_is_caught(lenet_costs, tmp_path: Path) -> None:
    # the second untrusted device computes W r from the masks alone; checked like the GPU's answers
    path = tmp_path / "desktop-cpu.yaml"
    path.write_text(DESKTOP + "  - {name: cpu1, kind: cpu, trusted: false, host: h1, speed: 1.0, memory: 8GiB}\n")
    chain, summary, lines = _run(
        lenet_costs,
        load_cluster(path),
        3,
        "outsourced",
        helper="cpu1",
        chunk=3,
        native=True,
        keep_outputs=True,
        fault_budget=0,
        placement="tee1(blinded:gpu1)[0-11]",
        tamper={"cpu1": 1},
    )
    assert [line["frame"] for line in lines] == [0, 1, 2]
    quantised = quantize_model(chain.model, "lenet5")
    first = next(iter(open_source("synthetic:1", chain.input_shape).frames()))
    assert np.array_equal(  # frame 0: GPU and W r device both honest, the quantised model's answer
        np.asarray(lines[0]["outputs"][-1], dtype=np.float32), quantised.dequantised(first.tensor).astype(np.float32)
    )
    assert summary.faults[0]["device"] == "cpu1" and summary.faults[0]["frame"] == 1  # W r's device, not the GPU
    assert "cpu1" not in summary.placements[-1]


def test_a_blinded_stage_wires_its_assistants_to_its_enclave_only() -> None:
    from serdab.runtime.manager import parse_placement
    from serdab.runtime.protocol import SINK, SOURCE
    from serdab.runtime.topology import topology

    placement = parse_placement("tee1(blinded:gpu1)[0-5] -> gpu1[6-11]")
    assert placement.describe() == "tee1(blinded:gpu1)[0-5] -> gpu1[6-11]"
    t = topology(placement, 1, wr_device="cpu1")
    enclave, tail = t.stages[0][0], t.stages[1][0]
    helper, wr = t.assistants(enclave)
    assert (helper.role, helper.device, wr.role, wr.device) == ("helper", "gpu1", "wr", "cpu1")
    assert t.outbound(enclave) == (tail.id, helper.id, wr.id)  # frames go to the first: the next stage
    assert t.inbound(enclave) == (SOURCE, helper.id, wr.id)
    assert t.inbound(helper) == t.outbound(helper) == (enclave.id,)
    assert t.served(wr) == enclave and t.assistants(tail) == ()
    assert set(t.links()) == {
        (SOURCE, enclave.id),
        (helper.id, enclave.id),
        (wr.id, enclave.id),
        (enclave.id, tail.id),
        (enclave.id, helper.id),
        (enclave.id, wr.id),
        (tail.id, SINK),
    }


def test_a_compressed_clock_keeps_the_enclaves_and_lets_the_period_hold() -> None:
    from serdab.runtime.emulation import HEADROOM, Emulation, choose_dilation, compressed_dilation

    seed000 = load_cluster("seed000")
    devices = list(seed000.devices)
    assert compressed_dilation(devices, cores=16) == pytest.approx(HEADROOM * 0.0073)  # the enclaves keep up
    # an untrusted stage taking 200 ms on this host must stay under a 1 s period: 1.6 x 200 ms / 1 s
    assert compressed_dilation(devices, cores=16, untrusted_host_s=0.2, period_s=1.0) == pytest.approx(0.32)
    # a worker's own 1 ms per frame is kept to 2% of a 0.5 s period
    assert compressed_dilation(devices, cores=16, period_s=0.5) == pytest.approx(0.001 / 0.02 / 0.5)
    assert compressed_dilation(devices, untrusted_host_s=100.0, period_s=1.0) == choose_dilation(devices)
    assert "clock compressed" in Emulation(False, 0.0117).describe()
