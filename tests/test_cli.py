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
    assert main(["demo", "--repeat", "5"]) == 0
    out = capsys.readouterr().out
    assert "first cut at or below 20x20: after block 11" in out
    assert "reproduce the whole model" in out
