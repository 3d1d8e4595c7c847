"""`serdab run` as a user runs it: a video in, one JSON line per frame out; bad input is one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serdab.cli.app import main
from serdab.runtime.frames import write_video

TINY = """
source: tee1
devices:
  - {name: tee1, kind: tee, trusted: true, host: h1, speed: 0.25, memory: 1KiB}
  - {name: cpu1, kind: cpu, trusted: false, host: h1, speed: 1.0, memory: 1KiB}
"""


def test_run_a_video_through_the_paper_cluster(tmp_path: Path, capsys) -> None:
    video = write_video(tmp_path / "clip.mp4", 9, height=40, width=48)
    out, summary = tmp_path / "results.jsonl", tmp_path / "summary.json"
    code = main(
        [
            "run",
            "lenet5",
            "--cluster",
            "paper",
            "--input",
            str(video),
            "--chunk",
            "4",
            "--out",
            str(out),
            "--json",
            str(summary),
        ]
    )
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(9))
    assert lines[3]["source"] == "clip.mp4#3" and len(lines[3]["top5"]) == 5
    assert {s["device"] for s in lines[0]["stages"]} <= {"tee1", "tee2", "e1", "gpu2"}
    report = json.loads(summary.read_text())
    assert report["frames"] == 9 and [c["frames"] for c in report["chunks"]] == [4, 4, 1]
    assert "emulated" in report["emulation"]
    printed = capsys.readouterr().out
    assert "measured vs predicted" in printed and "period P" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{tmp}/bad.mp4"], "cannot read video"),
        (["--input", "{tmp}/empty"], "no image files"),
        (["--input", "synthetic:x"], "synthetic source needs a frame count"),
        (["--placement", "tee1[0-2] -> gpu9[3-11]"], "unknown device 'gpu9'"),
        (
            ["--placement", "tee1[0-1] -> e1[2-11]"],
            "e1 is untrusted and may not receive the tensor at cut 1 (after block 1)",
        ),
        (["--cluster", "{tmp}/tiny.yaml"], "nothing can hold the first stage"),
        (["--slowdown", "tee1=fast"], "DEVICE=FACTOR"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    (tmp_path / "empty").mkdir()
    (tmp_path / "tiny.yaml").write_text(TINY)
    argv = ["run", "lenet5", "--input", "synthetic:3"]
    if "--cluster" not in args:
        argv += ["--cluster", "paper"]
    code = main(argv + [a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("serdab: error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_a_key_service_that_is_down_is_exit_4_at_once(capsys) -> None:
    code = main(["run", "lenet5", "--cluster", "paper", "--input", "synthetic:3", "--kms", "https://127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and "the key service is down" in err[-1] and "no KMS at https://127.0.0.1:1" in err[-1]
