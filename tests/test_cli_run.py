"""`serdab run` as a user runs it: a video in, one JSON line per frame out; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def test_run_a_blinded_placement_one_line_per_frame(tmp_path: Path, capsys) -> None:
    cluster = tmp_path / "desktop.yaml"
    cluster.write_text(
        "source: tee1\ndevices:\n"
        "  - {name: tee1, kind: tee, trusted: true, host: h1, speed: 0.5, memory: 93MiB, paging_factor: 5.0}\n"
        "  - {name: gpu1, kind: gpu, trusted: false, host: h1, speed: 4.0, memory: 8GiB}\n"
    )
    out = tmp_path / "results.jsonl"
    argv = ["run", "lenet5", "--cluster", str(cluster), "--input", "synthetic:4", "--chunk", "2", "--out", str(out)]
    code = main([*argv, "--blind", "in-stream", "--placement", "tee1(blinded:gpu1)[0-3] -> gpu1[4-11]"])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3] and all(len(line["top5"]) == 5 for line in lines)
    printed = capsys.readouterr().out
    assert "tee1(blinded:gpu1)[0-3] -> gpu1[4-11]" in printed and "measured vs predicted" in printed


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
        (["--blind", "sometimes"], "choose one of in-stream, pool, outsourced"),
        (["--tamper", "gpu2@1"], "it needs --blind"),
        (["--placement", "tee1(blinded:gpu2)[0-11]"], "the plan has no blinding costs (plan with --blind)"),
        (["--blind", "pool", "--placement", "tee1(blinded:tee2)[0-11]"], "tee2 is trusted"),
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


def _serdab_run(tmp: Path, *args: str) -> subprocess.Popen:
    """`serdab run` as its own process (a signal can only be sent to one), its TMPDIR ``tmp``."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    argv = [sys.executable, "-m", "serdab", "run", "lenet5", "--cluster", "paper", "--chunk", "10"]
    argv += ["--placement", "tee1[0-2] -> e1[3-11]", "--dilation", "100", *args]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answers(path: Path) -> list[tuple[int, str, list[int]]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["frame"], r["source"], [c["class"] for c in r["top5"]]) for r in rows]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_cleans_up_and_resume_gives_the_uninterrupted_answers(sig, tmp_path: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # short: the simulated NSM's sockets live there
    try:
        _stop_and_resume(sig, tmp_path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stop_and_resume(sig: signal.Signals, tmp_path: Path, tmp: Path) -> None:
    whole = tmp_path / "whole.jsonl"
    child = _serdab_run(tmp, "--input", "synthetic:40", "--out", str(whole))
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err

    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    child = _serdab_run(tmp, "--input", "synthetic:40", "--out", str(out), "--json", str(summary))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 12):
        time.sleep(0.05)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    answered = len(out.read_text().splitlines())
    assert 12 <= answered < 40
    assert f"{answered} frames answered (this run: 0-" in " ".join(err.split())
    assert f"results in {out}, resume with the same command and --resume {out}" in " ".join(err.split())
    assert json.loads(summary.read_text())["answered"] == answered
    # run directory, key service store, sockets, TLS files: all gone (others' files, e.g. a library's .ses, may stay)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("serdab-")] == []

    child = _serdab_run(tmp, "--input", "synthetic:40", "--resume", str(out))
    stdout, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert f"resuming: {answered} frames already answered" in stdout
    assert _answers(out) == _answers(whole)


def test_resume_refuses_another_input_or_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"frame": 0, "model": "lenet5", "source": "a.png", "top5": []}) + "\n")
    code = main(["run", "lenet5", "--cluster", "paper", "--input", "synthetic:3", "--resume", str(out)])
    assert (
        code == 2
        and "answers frame 0 for 'a.png', but this input's frame 0 is 'synthetic#0'" in capsys.readouterr().err
    )
    code = main(["run", "resnet18", "--cluster", "paper", "--input", "synthetic:3", "--resume", str(out)])
    assert code == 2 and "holds results of 'lenet5', not 'resnet18'" in capsys.readouterr().err
