from __future__ import annotations

import re
from pathlib import Path

import pytest

from serdab.cluster import load_cluster, parse_bandwidth_bytes_per_s, parse_bytes, parse_seconds
from serdab.errors import ClusterError

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "clusters").glob("*.yaml"))

GOOD = """
source: tee1
devices:
  - {name: tee1, kind: tee, trusted: true,  host: e1, speed: 0.25, memory: 93MiB, paging_factor: 4.0}
  - {name: gpu2, kind: gpu, trusted: false, host: e2, speed: 8.0,  memory: 16GiB}
links:
  - {a: e1, b: e2, bandwidth: 100Mbit, rtt: 5ms}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [("93MiB", 93 * 2**20), ("16GiB", 16 * 2**30), ("128MB", 128_000_000), (4096, 4096), ("1.5 KiB", 1536)],
)
def test_sizes(text, expected) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100Mbit", 12.5e6), ("30Mbps", 3.75e6), ("1Gbit", 1.25e8), ("12.5MB/s", 12.5e6), (1000, 1000.0)],
)
def test_bandwidths_are_bytes_per_second(text, expected) -> None:
    assert parse_bandwidth_bytes_per_s(text) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "expected"), [("5ms", 0.005), ("0.2s", 0.2), ("100us", 1e-4), (0, 0.0)])
def test_durations(text, expected) -> None:
    assert parse_seconds(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["93XB", "fast", "-5MiB", True])
def test_bad_sizes_show_an_example(bad) -> None:
    with pytest.raises(ValueError, match="93MiB"):
        parse_bytes(bad)


def test_shipped_examples_load() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"paper", "single-tee", "edge-cloud", "cvm-h100", "edge-cvm-cgpu"} <= names
    for path in EXAMPLES:
        cluster = load_cluster(path)
        assert cluster.device(cluster.source).trusted
    assert len(load_cluster(EXAMPLES[0].parent / "edge-cloud.yaml").devices) == 6


def test_good_cluster(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    cluster = load_cluster(path)
    assert cluster.name == "c"
    assert cluster.device("tee1").memory_bytes == 93 * 2**20
    assert cluster.link("e1", "e2").bandwidth_bytes_per_s == pytest.approx(12.5e6)
    assert cluster.link("e2", "e1").rtt_s == pytest.approx(0.005)
    assert cluster.link("e1", "e1") is cluster.local


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("kind: gpu", "kind: fpga"), "devices[1] (gpu2).kind"),
        (("memory: 16GiB", "memory: 16XB"), "devices[1] (gpu2).memory: '16XB' is not a size like 93MiB"),
        (("source: tee1", "source: gpu2"), "source 'gpu2' must be trusted"),
        (("source: tee1", "source: tee9"), "source 'tee9' is not a device"),
        (("name: gpu2", "name: tee1"), "device names must be unique; repeated: tee1"),
        (("b: e2", "b: e3"), "'e3' is not a host"),
        (("speed: 8.0,", "speed: 8.0, paging_factor: 2,"), "paging_factor applies to kind tee only"),
        (("speed: 8.0,", "speed: 0,"), "devices[1] (gpu2).speed"),
        (("speed: 8.0,", "sped: 8.0,"), "devices[1] (gpu2).speed: Field required"),
        (("rtt: 5ms", "rtt: soon"), "links[0].rtt"),
    ],
)
def test_bad_cluster_names_the_field(tmp_path, edit, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(ClusterError) as err:
        load_cluster(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_cluster_files(tmp_path) -> None:
    with pytest.raises(ClusterError, match="not found"):
        load_cluster(tmp_path / "missing.yaml")
    (tmp_path / "y.yaml").write_text("devices: [unclosed")
    with pytest.raises(ClusterError, match="not valid YAML"):
        load_cluster(tmp_path / "y.yaml")
    (tmp_path / "l.yaml").write_text("- just a list")
    with pytest.raises(ClusterError, match="expected a mapping"):
        load_cluster(tmp_path / "l.yaml")


CONFIDENTIAL_CLUSTER = """
source: cvm
local: {bandwidth: 200Gbit, rtt: 0.01ms}
devices:
  - {name: cvm,  kind: cvm,  trusted: true, host: cloud, native_speed: 2.0, memory: 64GiB}
  - {name: h100, kind: cgpu, trusted: true, host: cloud, native_speed: 30.0, memory: 80GiB,
     transfer_overhead: 0.1ms, transfer_bandwidth: 32Gbit}
  - {name: gpu,  kind: gpu,  trusted: false, host: other, speed: 30.0, memory: 80GiB}
links:
  - {a: cloud, b: other, bandwidth: 10Gbit, rtt: 0.5ms}
"""


def test_confidential_vms_and_gpus_are_trusted_devices_with_derived_speed(tmp_path) -> None:
    path = tmp_path / "cc.yaml"
    path.write_text(CONFIDENTIAL_CLUSTER)
    cluster = load_cluster(path)
    cvm, h100 = cluster.device("cvm"), cluster.device("h100")
    assert cvm.speed == pytest.approx(2.0 / 1.10) and cvm.slowdown == 1.10  # the default CPU-TEE slowdown
    assert h100.speed == 30.0 and h100.slowdown == 1.0 and h100.transfer_overhead_s == pytest.approx(1e-4)
    for edit, message in [
        (("kind: cvm,  trusted: true", "kind: cvm,  trusted: false"), "a cvm is trusted by what it is"),
        (("native_speed: 2.0,", "native_speed: 2.0, speed: 1.0,"), "native_speed (and slowdown) or speed"),
        (("native_speed: 2.0,", "native_speed: 2.0, paging_factor: 5,"), "paging_factor applies to kind tee only"),
        (("speed: 30.0, memory: 80GiB}", "speed: 30.0, memory: 80GiB, transfer_overhead: 1ms}"), "apply to kind cgpu"),
        (("speed: 30.0, memory: 80GiB}", "speed: 30.0, memory: 80GiB, slowdown: 1.1}"), "apply to kinds cvm and cgpu"),
        (("native_speed: 2.0,", "native_speed: 2.0, slowdown: 0.5,"), "slowdown"),
    ]:
        path.write_text(CONFIDENTIAL_CLUSTER.replace(*edit))
        with pytest.raises(ClusterError, match=re.escape(message)):
            load_cluster(path)


def test_a_confidential_gpu_adds_its_bounce_buffer_toll_to_every_transfer(tmp_path) -> None:
    path = tmp_path / "cc.yaml"
    path.write_text(CONFIDENTIAL_CLUSTER)
    cluster = load_cluster(path)
    cvm, h100, gpu = (cluster.device(n) for n in ("cvm", "h100", "gpu"))
    into = cluster.channel(cvm, h100)
    assert into is not None and into.rtt_s == pytest.approx(0.01e-3 + 0.1e-3)
    assert into.bandwidth_bytes_per_s == pytest.approx(4e9)  # the bounce buffers' 32 Gbit, below PCIe's 200
    out = cluster.channel(h100, gpu)
    assert out is not None and out.bandwidth_bytes_per_s == pytest.approx(1.25e9) and out.rtt_s == pytest.approx(0.6e-3)
    assert cluster.channel(cvm, gpu) == cluster.link("cloud", "other")  # no confidential GPU at either end
    assert cluster.channel(h100, h100) is cluster.local  # nothing crosses; the cost model charges 0 here


def test_the_planner_sends_a_whole_frame_to_a_confidential_gpu_until_its_toll_dominates(tmp_path) -> None:
    from serdab.bench.placement_bench import _with_toll
    from serdab.plan import get_planner
    from serdab.plan.model import plan_request
    from serdab.testing import synthetic_workload

    path = tmp_path / "cc.yaml"
    path.write_text(CONFIDENTIAL_CLUSTER)
    cluster = load_cluster(path)
    workload = synthetic_workload(12)
    placements = {}
    for toll in (1e-4, 1.0):
        request = plan_request(workload, _with_toll(cluster, toll), policy="resolution:20", chunk=1000)
        placement = get_planner("optimal").plan(request)
        assert placement is not None
        placements[toll] = {d for s in placement.stages for d in s.devices}
    assert "h100" in placements[1e-4]  # the trusted GPU takes blocks the 20x20 rule keeps from `gpu`
    assert "h100" not in placements[1.0]  # a one-second toll per crossing: the GPU is not worth reaching
