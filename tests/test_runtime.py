"""The pipeline runtime: links, emulation rules, stage equality, exactly-once, tampering, faults, re-planning."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serdab.cluster import load_cluster
from serdab.errors import LinkIntegrityError, PlanError, WorkerError
from serdab.framing import decode_payload, encode_payload, new_records
from serdab.onnxrt import make_session
from serdab.profile import cached_profile
from serdab.runtime.deployment import PROBE_FRAMES
from serdab.runtime.frames import open_source
from serdab.runtime.link import LinkOpener, LinkSealer, LinkShaper, LinkSpec
from serdab.runtime.manager import ApplicationManager, RunOptions, parse_placement
from serdab.runtime.repartition import Repartitioner, StageObservation
from serdab.runtime.resources import ResourceManager
from serdab.testing import TamperingProxy
from tests.conftest import chain_of

THREE = """
source: tee1
devices:
  - {name: tee1, kind: tee, trusted: true,  host: h1, speed: 0.5, memory: 93MiB, paging_factor: 5.0}
  - {name: tee2, kind: tee, trusted: true,  host: h2, speed: 0.5, memory: 93MiB, paging_factor: 5.0}
  - {name: cpu3, kind: cpu, trusted: false, host: h2, speed: 1.0, memory: 8GiB}
links:
  - {a: h1, b: h2, bandwidth: 1Gbit, rtt: 1ms}
"""


def _spec(**kw) -> LinkSpec:
    return LinkSpec(kw.get("stream", "s"), "a", "b", b"k" * 32)


# --- links ----------------------------------------------------------------------------------------
def test_link_round_trip_and_each_attack_is_detected() -> None:
    sealer, opener = LinkSealer(_spec()), LinkOpener(_spec())
    records = new_records()
    records[0] = (1.0, 2.0, 3.0)
    payload = encode_payload([np.arange(6, dtype=np.float32).reshape(2, 3)], records)
    first = sealer.seal(7, payload)
    frame, body, _ = opener.open(first)
    arrays, meta = decode_payload(body)
    assert frame == 7 and arrays[0].tolist() == [[0, 1, 2], [3, 4, 5]] and meta[0].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(meta[1:]).all()

    with pytest.raises(LinkIntegrityError) as replayed:
        opener.open(first)
    assert replayed.value.kind == "replayed"

    second = sealer.seal(8, payload)
    tampered = {**second, "ct": second["ct"][:-1] + bytes([second["ct"][-1] ^ 1])}
    with pytest.raises(LinkIntegrityError) as bad:
        opener.open(tampered)
    assert bad.value.kind == "tampered"
    relabelled = {**second, "frame": 9}  # the frame id is bound too
    with pytest.raises(LinkIntegrityError, match="tampered"):
        opener.open(relabelled)

    sealer.seal(9, payload)  # lost on the way
    with pytest.raises(LinkIntegrityError) as dropped:
        opener.open(sealer.seal(10, payload))
    assert dropped.value.kind == "dropped" and "never arrived" in str(dropped.value)


def test_a_link_key_of_another_stream_does_not_open() -> None:
    message = LinkSealer(_spec(stream="one")).seal(0, b"x")
    with pytest.raises(LinkIntegrityError, match="tampered"):
        LinkOpener(_spec(stream="two")).open(message)


def test_shaper_charges_bytes_over_bandwidth_plus_rtt_dilated() -> None:
    now = [0.0]
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    shaper = LinkShaper(1000.0, 0.01, dilation=2.0, clock=lambda: now[0], sleep=sleep)
    arrive = shaper.depart(500)  # 0.5 s on the wire, dilated to 1 s, then 2 x 10 ms rtt
    assert slept == [pytest.approx(1.0)] and arrive == pytest.approx(1.02)
    arrive = shaper.depart(500)  # one frame at a time: the second leaves once the first has arrived
    assert arrive == pytest.approx(2.04)


# --- pure rules -----------------------------------------------------------------------------------
def test_repartitioner_needs_patience_and_estimates_speed() -> None:
    rule = Repartitioner(threshold=0.2, patience=2)
    slow = [
        StageObservation(devices=("tee1",), speed=0.25, predicted_s=0.1, measured_s=0.3),
        StageObservation(devices=("e1",), speed=1.0, predicted_s=0.05, measured_s=0.051),
    ]
    speeds, streak, _ = rule.decide(slow, {})
    assert speeds is None and streak == {("tee1",): 1}
    speeds, streak, reason = rule.decide(slow, streak)
    assert speeds == {"tee1": pytest.approx(0.25 / 3)} and streak == {} and "tee1" in reason
    back_in_line = [StageObservation(devices=("tee1",), speed=0.25, predicted_s=0.1, measured_s=0.11)]
    assert rule.decide(back_in_line, {("tee1",): 1})[1] == {}  # the streak must be consecutive


def test_resource_manager_marks_silent_devices_and_keeps_the_source() -> None:
    now = [0.0]
    resources = ResourceManager(load_cluster("paper"), lost_after_s=3.0, clock=lambda: now[0])
    resources.heartbeat("e1")
    resources.heartbeat("gpu2")
    now[0] = 2.0
    resources.heartbeat("gpu2")
    now[0] = 4.0
    assert resources.silent() == ["e1"]
    resources.deregister("e1", "gone")
    assert "e1" not in resources.cluster().names and resources.lost() == {"e1": "gone"}
    with pytest.raises(Exception, match="source"):
        resources.deregister("tee1")
    assert resources.cluster({"gpu2": 2.0}).device("gpu2").speed == 2.0


def test_parse_placement() -> None:
    placement = parse_placement("tee1+tee2[0-11] -> e1[12-21]")
    assert placement.describe() == "tee1+tee2[0-11] -> e1[12-21]"
    with pytest.raises(PlanError, match="cannot read placement"):
        parse_placement("tee1[0-11] -> e1")


# --- the runtime, for real ------------------------------------------------------------------------
def _manager(model: str, cluster, executor=None, route=None, **options) -> ApplicationManager:
    chain = chain_of(model)
    profile, _ = cached_profile(chain, model, repeat=3, warmup=1)
    return ApplicationManager(chain, model, profile, cluster, RunOptions(**options), executor=executor, route=route)


@pytest.fixture
def three(tmp_path: Path):
    path = tmp_path / "three.yaml"
    path.write_text(THREE)
    return load_cluster(path)


def test_three_stage_dag_pipeline_equals_the_whole_model(three, executor) -> None:
    chain = chain_of("resnet18")
    manager = _manager(
        "resnet18",
        three,
        executor,
        chunk=3,
        native=True,
        keep_outputs=True,
        placement="tee2[0-7] -> tee1[8-11] -> cpu3[12-21]",  # the input frame crosses a link too
    )
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:5", chain.input_shape).frames(), on_result=lines.append)
    whole = make_session(chain.model)
    for frame, line in zip(open_source("synthetic:5", chain.input_shape).frames(), lines, strict=True):
        expected = whole.run(None, {chain.input_name: frame.tensor})[0]
        assert line["frame"] == frame.id
        assert float(np.abs(line["outputs"][-1] - expected).max()) <= 1e-4
        assert [s["device"] for s in line["stages"]] == ["tee2", "tee1", "cpu3"]
    assert [c.frames for c in summary.chunks] == [3, 2]
    assert summary.placements == ["tee2[0-7] -> tee1[8-11] -> cpu3[12-21]"]
    # every hop: the bytes its socket carried per frame are the bytes the cost model charges for it
    hops = {(h.src[0], h.dst[0]): h for h in summary.hops}
    assert set(hops) == {("tee1", "tee2"), ("tee2", "tee1"), ("tee1", "cpu3")}
    assert hops[("tee1", "tee2")].cut is None and hops[("tee1", "tee2")].predicted_bytes < 151_000  # uint8 pixels
    for hop in hops.values():
        assert hop.frames >= 5
        assert 0 <= hop.predicted_bytes - hop.measured_bytes <= 8, hop


def test_manager_refuses_a_placement_that_sends_56x56_to_an_untrusted_device() -> None:
    manager = _manager("resnet18", load_cluster("paper"), placement="tee1[0-2] -> e1[3-21]")
    with pytest.raises(PlanError, match="e1 is untrusted and may not receive the tensor at cut 2 \\(after block 2\\)"):
        manager.plan()


@pytest.mark.parametrize("action", ["tamper", "replay", "drop"])
def test_an_attack_on_a_link_is_detected_and_stops_the_run(action: str, executor) -> None:
    proxies: list[TamperingProxy] = []

    def route(src: str, dst: str, address: tuple[str, int]) -> tuple[str, int]:
        # past the warm-up frame and the latency probes: the attack hits the stream itself
        proxies.append(TamperingProxy(address, action, at=1 + PROBE_FRAMES + 2))
        return proxies[-1].address

    manager = _manager(
        "lenet5", load_cluster("paper"), executor, route, chunk=6, placement="tee1[0-2] -> e1[3-11]", dilation=4.0
    )
    try:
        with pytest.raises(LinkIntegrityError) as caught:
            manager.run(open_source("synthetic:12", (1, 1, 28, 28)).frames())
    finally:
        for proxy in proxies:
            proxy.close()
    assert caught.value.kind == {"tamper": "tampered", "replay": "replayed", "drop": "dropped"}[action]
    assert "e1" in str(caught.value)


@pytest.mark.parametrize("victim", ["tee1", "e1"])
def test_killing_a_worker_mid_stream_loses_no_frame(victim: str, executor) -> None:
    manager = _manager(
        "lenet5", load_cluster("paper"), executor, chunk=10, placement="tee1[0-2] -> e1[3-11]", dilation=300.0
    )
    killed: list[int] = []

    def killer() -> None:
        while not killed:
            d = manager.deployment
            if d is not None and d.frames_sent >= 5:
                worker = next(w for w in d.workers if w.device == victim)
                if worker.handle and worker.handle.pid:
                    import os
                    import signal

                    os.kill(worker.handle.pid, signal.SIGKILL)
                    killed.append(worker.handle.pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:20", (1, 1, 28, 28)).frames(), on_result=lines.append)
    assert killed and [line["frame"] for line in lines] == list(range(20))
    assert len(summary.faults) == 1 and summary.faults[0]["device"] == victim
    assert summary.chunks[0].interrupted and not summary.chunks[1].interrupted


def test_an_injected_slowdown_triggers_repartitioning_without_losing_frames() -> None:
    manager = _manager(
        "lenet5",
        load_cluster("paper"),
        chunk=4,
        placement=None,
        dilation=40.0,
        slowdowns={"e1": (20.0, 0)},
        repartition=Repartitioner(0.2, 2),
    )
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:24", (1, 1, 28, 28)).frames(), on_result=lines.append)
    assert [line["frame"] for line in lines] == list(range(24))
    assert summary.switches, summary.chunks
    switch = summary.switches[0]
    assert switch["after_chunk"] == 1 and "e1" in switch["reason"] and switch["from"] != switch["to"]
    assert "e1" not in parse_placement(switch["to"]).devices
    assert len(summary.placements) == 2


def test_an_enclave_from_other_code_is_refused_by_the_manager_and_by_the_kms(monkeypatch, tmp_path) -> None:
    import dataclasses

    import serdab.runtime.stages as stages
    from serdab.tee.image import build_image

    manager = _manager("lenet5", load_cluster("paper"), chunk=4, placement="tee1[0-2] -> e1[3-11]")
    genuine = stages.package_stages
    rogue_code = tmp_path / "rogue_entry.py"  # the genuine entrypoint, and one line more
    rogue_code.write_text(f"from {stages.STAGE_ENTRYPOINT.replace(':', ' import ')} as main\n# one changed line\n")

    def rogue_images(chain, placement, trusted, out_dir, run_id):
        artifacts = genuine(chain, placement, trusted, out_dir, run_id)
        for k, a in enumerate(artifacts):
            if a.image is not None:  # the same encrypted weights in an image whose code differs
                rogue = build_image(
                    rogue_code,
                    out_dir / "rogue",
                    "rogue_entry:main",
                    models={a.stage_file: a.image.path / "models" / a.stage_file},
                )
                artifacts[k] = dataclasses.replace(a, image=dataclasses.replace(a.image, path=rogue))
        return artifacts

    monkeypatch.setattr("serdab.runtime.manager.package_stages", rogue_images)
    with pytest.raises(WorkerError, match="not the stage image.*PcrMismatchError"):
        manager.run(open_source("synthetic:4", (1, 1, 28, 28)).frames())

    # a manager that skipped its own check: the KMS still refuses the stage key
    import serdab.tee.evidence as evidence

    real = evidence.verify_evidence
    monkeypatch.setattr(
        evidence,
        "verify_evidence",
        lambda doc, policy, **kw: real(doc, dataclasses.replace(policy, measurements={}), **kw),
    )
    manager = _manager("lenet5", load_cluster("paper"), chunk=4, placement="tee1[0-2] -> e1[3-11]")
    monkeypatch.setattr("serdab.kms.service.verify_evidence", real)
    with pytest.raises(WorkerError, match="refused: PcrMismatchError"):
        manager.run(open_source("synthetic:4", (1, 1, 28, 28)).frames())


def test_a_device_that_stays_gone_is_planned_around(monkeypatch) -> None:
    from serdab.errors import TeeError
    from serdab.runtime.executor import LocalExecutor

    class Vanishing(LocalExecutor):
        """e1's worker dies once mid-stream and its device never comes back."""

        def __init__(self) -> None:
            super().__init__()
            self.gone = False

        def start(self, spec):
            if spec.device == "e1" and self.gone:
                raise TeeError("e1 is unreachable")
            return super().start(spec)

    executor = Vanishing()
    chain = chain_of("lenet5")
    profile, _ = cached_profile(chain, "lenet5", repeat=3, warmup=1)
    options = RunOptions(chunk=10, dilation=300.0, repartition=None)
    manager = ApplicationManager(chain, "lenet5", profile, load_cluster("paper"), options, executor=executor)

    def killer() -> None:
        while True:
            d = manager.deployment
            if d is not None and d.frames_sent >= 5:
                worker = next((w for w in d.workers if w.device == "e1"), None)
                if worker and worker.handle and worker.handle.pid:
                    import os
                    import signal

                    executor.gone = True
                    os.kill(worker.handle.pid, signal.SIGKILL)
                    return
            time.sleep(0.01)

    assert "e1" in manager.plan().devices
    threading.Thread(target=killer, daemon=True).start()
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:20", (1, 1, 28, 28)).frames(), on_result=lines.append)
    assert [line["frame"] for line in lines] == list(range(20))
    assert "e1" not in parse_placement(summary.placements[-1]).devices
    actions = [f["action"] for f in summary.faults]
    assert actions[0].startswith("restarted the workers") and actions[-1].startswith("re-planned without e1"), actions
    assert all(f["device"] == "e1" for f in summary.faults)
    assert "e1" in manager.resources.lost()


def test_a_replicated_placement_is_measured_as_predicted_on_every_path() -> None:
    """Replicas on both sides of a shaped link: L per path, P and T(n) within 10% of the formula and
    the event simulation (emulated at the cluster's default dilation)."""
    manager = _manager(
        "resnet18",
        load_cluster("paper"),
        chunk=6,
        placement="tee1+tee2[0-11] -> e1[12-21]",
        replicate=True,
        repartition=None,
    )
    summary = manager.run(open_source("synthetic:6", (1, 3, 224, 224)).frames())
    rows = summary.measured_vs_predicted()
    assert {"L_path0: tee1 -> e1", "L_path1: tee2 -> e1"} <= set(rows)
    for name, row in rows.items():
        if name != "L_first":
            assert abs(row["measured"] / row["predicted"] - 1) <= 0.10, (name, row)
    t = rows["T"]["measured"]
    assert abs(t / rows["T_simulated"]["predicted"] - 1) <= 0.10
