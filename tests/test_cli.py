from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from torch import nn

from serdab.cli.app import main
from serdab.models import export_module


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory) -> str:
    proto = export_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), (3, 16, 16))
    for dim in (2, 3):
        proto.graph.input[0].type.tensor_type.shape.dim[dim].dim_param = "side"
    path = tmp_path_factory.mktemp("dyn") / "dynamic.onnx"
    onnx.save(proto, path)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "missing/model.onnx"], "model file not found"),
        (["profile", "resnet19"], "no zoo model or file named 'resnet19'"),
        (["partition", "lenet5", "--cuts", "11", "--out", "{tmp}"], "cut 11 is out of range"),
        (["partition", "lenet5", "--cuts", "/0/Conv_output_0x", "--out", "{tmp}"], "neither a block index"),
        (["partition", "resnet18", "--cuts", "/4/conv1/Conv_output_0", "--out", "{tmp}"], "not a clean cut"),
        (["leakage", "lenet5", "--images", "{tmp}/nothing"], "image directory not found"),
        (["profile", "lenet5", "--input-shape", "1,a,28"], "not a list of integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path) -> None:
    code = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    assert message in _error_line(capsys)


def test_not_onnx_file(tmp_path, capsys) -> None:
    bad = tmp_path / "photo.onnx"
    bad.write_text("this is text")
    assert main(["partition", str(bad), "--cuts", "1", "--out", str(tmp_path / "o")]) == 2
    assert "is not a valid ONNX model" in _error_line(capsys)


def test_dynamic_spatial_size_without_input_shape(dynamic_onnx, capsys, tmp_path) -> None:
    assert main(["partition", dynamic_onnx, "--cuts", "0", "--out", str(tmp_path)]) == 2
    assert "pass --input-shape" in _error_line(capsys)
    assert main(["partition", dynamic_onnx, "--cuts", "0", "--out", str(tmp_path), "--input-shape", "3,20,20"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"][1]["output_shapes"] == [[1, 4, 16, 16]]


def test_partition_writes_stages_and_manifest(tmp_path, capsys) -> None:
    out = tmp_path / "stages"
    assert main(["partition", "lenet5", "--cuts", "2,6", "--out", str(out), "--json", str(tmp_path / "m.json")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["stages"]] == ["stage0.onnx", "stage1.onnx", "stage2.onnx"]
    assert manifest["stages"][0]["blocks"] == [0, 2] and manifest["stages"][0]["output_bytes"] == 6 * 14 * 14 * 4
    assert manifest["stages"][1]["input"] == manifest["stages"][0]["outputs"][0]
    assert all((out / s["file"]).exists() for s in manifest["stages"])
    assert json.loads((tmp_path / "m.json").read_text()) == manifest


def test_profile_command_prints_table_and_writes_json(tmp_path, capsys) -> None:
    target = tmp_path / "p.json"
    assert main(["profile", "he_cnn5", "--repeat", "3", "--json", str(target)]) == 0
    out = capsys.readouterr().out
    assert "he_cnn5" in out and "sum of blocks" in out
    assert json.loads(target.read_text())["model"] == "he_cnn5"
    assert main(["profile", "he_cnn5", "--repeat", "3"]) == 0  # second run comes from the cache
    assert "cached profile" in capsys.readouterr().out


def test_models_lists_the_zoo(capsys) -> None:
    assert main(["models", "--names"]) == 0
    names = capsys.readouterr().out.split()
    assert {
        "alexnet",
        "vgg16",
        "resnet18",
        "mobilenetv2",
        "squeezenet1_1",
        "googlenet",
        "lenet5",
        "cifar_cnn",
        "vgg16_128",
        "he_cnn6",
        "he_cnn5",
        "lenet5_digits",
    } == set(names)


def test_help_explains_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("models", "profile", "partition", "leakage", "demo"):
        assert command in out


def test_console_script_reports_errors_without_traceback(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serdab", "profile", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"serdab: error: model file not found: {tmp_path / 'none.onnx'}"


@pytest.mark.slow
def test_demo_runs_end_to_end(capsys) -> None:
    assert main(["demo", "--repeat", "5", "--frames", "8", "--chunk", "4"]) == 0
    out = capsys.readouterr().out
    assert "first cut at or below 20x20: after block 11" in out
    assert "reproduce the whole model" in out
    assert "placement of resnet18 on paper" in out and "faster (predicted from emulated" in out
    assert "every one answered once" in out and "measured vs predicted" in out
    # whatever plan it picked, every measured-vs-predicted line within 10% (issue 26)
    import re

    gaps = [float(g) for g in re.findall(r"│\s*([+-]\d+\.\d)% │", out)]
    assert len(gaps) >= 5 and max(abs(g) for g in gaps) <= 10.0, gaps


@pytest.fixture
def saved_profile(resnet18_profile, tmp_path) -> str:
    path = tmp_path / "resnet18.json"
    resnet18_profile.save(path)
    return str(path)


def test_plan_prints_the_placement_and_writes_the_contract(saved_profile, clusters_dir, tmp_path, capsys) -> None:
    out = tmp_path / "plan.json"
    cluster = str(clusters_dir / "paper.yaml")
    assert main(["plan", "--profile", saved_profile, "--cluster", cluster, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "optimal placement of resnet18 on paper" in text
    assert "frame latency L =" in text and "period P =" in text and "T(10800) = L + (n-1) P" in text
    assert "event simulation of 10800 frames" in text
    doc = json.loads(out.read_text())
    assert doc["strategy"] == "optimal" and doc["chunk"] == 10800
    assert doc["stages"][0]["device"] == "tee1"
    assert doc["chunk_time_s"] == pytest.approx(doc["latency_s"] + 10799 * doc["period_s"])


def test_plan_from_a_model_with_strategy_and_replication(clusters_dir, capsys) -> None:
    assert main(["plan", "lenet5", "--cluster", "edge-cloud", "--chunk", "100", "--replicate", "--trusted-tail"]) == 0
    assert "optimal+replicate placement of lenet5 on edge-cloud" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster", "{clusters}/nope.yaml"], "cluster file not found"),
        (
            ["--cluster", "moon"],
            "cluster file not found: moon (shipped examples: cvm-h100, edge-cloud, edge-cvm-cgpu, paper, seed000, "
            "single-tee)",
        ),
        (["--cluster", "{clusters}/paper.yaml", "--strategy", "fastest"], "unknown strategy 'fastest'"),
        (["--cluster", "{clusters}/paper.yaml", "--privacy", "blur:3"], "unknown privacy policy"),
        (["--cluster", "{clusters}/paper.yaml", "--privacy", "ssim:0.2"], "needs leakage measurements"),
        (["--cluster", "{clusters}/paper.yaml", "--strategy", "serdab", "--replicate"], "--replicate applies to"),
        (
            [
                "--cluster",
                "{clusters}/single-tee.yaml",
                "--strategy",
                "two-tees",
                "--privacy",
                "trusted-only",
                "--leakage",
                "{tmp}/missing.json",
            ],
            "leakage file not found",
        ),
        (["--cluster", "{tmp}/tiny.yaml"], "nothing can hold the first stage"),
    ],
)
def test_plan_errors_are_one_line(saved_profile, clusters_dir, tmp_path, capsys, args, message) -> None:
    (tmp_path / "tiny.yaml").write_text(
        "source: t\ndevices:\n  - {name: t, kind: tee, trusted: true, host: h, speed: 1, memory: 1KiB}\n"
    )
    args = [a.replace("{clusters}", str(clusters_dir)).replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["plan", "--profile", saved_profile, *args]) == 2
    assert message in _error_line(capsys)


def test_plan_needs_a_model_or_a_profile(clusters_dir, capsys) -> None:
    assert main(["plan", "--cluster", str(clusters_dir / "paper.yaml")]) == 2
    assert "give a MODEL to profile or --profile" in _error_line(capsys)


def test_plan_measures_leakage_for_similarity_policies(lenet, tmp_path, capsys) -> None:
    from serdab.profile import profile_chain

    saved = tmp_path / "lenet.json"
    profile_chain(lenet, "lenet5", repeat=2, warmup=0).save(saved)
    out = tmp_path / "plan.json"
    args = ["plan", "lenet5", "--profile", str(saved), "--cluster", "single-tee", "--privacy", "pearson:0.5"]
    assert main([*args, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["privacy"]["policy"] == "pearson:0.5"
    exposed = doc["privacy"]["untrusted_inputs"]
    assert exposed and all(e["pearson"] < 0.5 for e in exposed)
    assert exposed[0]["cut"] > 2  # resolution:20 would have released LeNet's 10x10 maps at cut 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule", "eval", "--workload", "mnist"], "unknown workload 'mnist'"),
        (["schedule", "eval", "--mix", "1,2"], "must be three numbers"),
        (["schedule", "eval", "--mix", "0,0,0"], "has no devices"),
        (["schedule", "eval", "--privacy", "max"], "unknown privacy level"),
        (["schedule", "eval", "--policy", "{tmp}/missing.zip"], "unknown policy"),
    ],
)
def test_schedule_errors_are_one_line(args, message, capsys, tmp_path) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    assert message in _error_line(capsys)


def test_schedule_train_then_eval_and_a_corrupt_policy(tmp_path, capsys) -> None:
    policy = tmp_path / "p.zip"
    assert main(["schedule", "train", "--out", str(policy), "--steps", "300", "--devices", "8"]) == 0
    assert policy.exists() and json.loads(policy.with_suffix(".json").read_text())["masked"] is True
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "schedule",
                "eval",
                "--devices",
                "8",
                "--requests",
                "10",
                "--policy",
                "greedy",
                "--policy",
                str(policy),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert [r["policy"] for r in json.loads(out.read_text())["rows"]] == ["greedy", str(policy)]
    capsys.readouterr()
    assert main(["schedule", "eval", "--devices", "9", "--policy", str(policy)]) == 2
    assert "was trained for 8 devices" in _error_line(capsys)
    policy.write_bytes(b"corrupt")
    assert main(["schedule", "eval", "--devices", "8", "--policy", str(policy)]) == 2
    assert "is not a saved Serdab scheduling policy" in _error_line(capsys)
