"""The README's examples run as written: every Python block, and every `$ serdab ...` line with the output shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from serdab.cli.app import main

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [
    (line[2:], block.splitlines()[i + 1])
    for lang, block in BLOCKS
    if lang == "text"
    for i, line in enumerate(block.splitlines())
    if line.startswith("$ serdab ") and i + 1 < len(block.splitlines())
]


def test_the_readme_has_examples() -> None:
    assert PYTHON and SHELL


@pytest.mark.parametrize("code", PYTHON)
def test_python_examples_run(code: str, capsys) -> None:
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README
    assert capsys.readouterr().out.strip() or "print(" not in code


@pytest.mark.parametrize(("command", "shown"), SHELL)
def test_shell_examples_print_what_the_readme_shows(command: str, shown: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(shlex.split(command)[1:])
    out = capsys.readouterr()
    printed = (out.err if shown.startswith("serdab: error") else out.out).strip().splitlines()
    assert printed and printed[-1] == shown
    assert code == (2 if shown.startswith("serdab: error") else 0)
