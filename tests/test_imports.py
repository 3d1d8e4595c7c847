"""The import graph stays light: leaves and enclave processes load no ML stack (fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "onnx", "skimage", "sklearn", "matplotlib", "tenseal", "stable_baselines3")


def _loaded(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "allowed"),
    [
        ("import serdab", ()),
        ("import serdab.crypto", ()),
        ("import serdab.tee", ()),
        ("import serdab.errors, serdab.validation", ()),
        ("import serdab.runtime.engine, serdab.kms.client, serdab.tee.nsm", ()),  # a stage enclave, before its stage
        ("import serdab.kms.enclave", ()),  # the key service enclave
        ("from serdab.cli.app import cli", ()),  # `serdab --help`
        ("import serdab.cli.tee_cmd", ()),  # `serdab attest`
        ("import serdab.cli.serve_cmd", ()),  # `serdab infer`, `serdab load`, `serdab stress`
        ("import serdab.serve.client, serdab.serve.balancing, serdab.serve.autoscale", ()),  # serdab.Client
    ],
)
def test_light_modules_load_no_ml_stack(code: str, allowed: tuple[str, ...]) -> None:
    heavy = _loaded(code) & set(HEAVY) - set(allowed)
    assert not heavy, f"{code!r} loads {sorted(heavy)}"


def test_a_stage_worker_loads_onnxruntime_but_not_torch() -> None:
    loaded = _loaded("import serdab.runtime.engine, serdab.onnxrt")
    assert "torch" not in loaded and "onnx" not in loaded


def test_the_public_api_resolves_lazily() -> None:
    loaded = _loaded("import serdab\nserdab.SerdabError\nserdab.load_cluster")
    assert "torch" not in loaded and "onnxruntime" not in loaded
    assert "torch" in _loaded("import serdab\nserdab.open_chain")


def test_tee_imports_only_leaves() -> None:
    probe = "import sys, json, serdab.tee\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('serdab.'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    modules = set(json.loads(out.strip().splitlines()[-1]))
    assert all(m.split(".")[1] in ("tee", "crypto", "errors", "validation", "proc") for m in modules), modules


@pytest.mark.parametrize(
    "code",
    [
        "import serdab.runtime.engine as e, serdab.kms.client, serdab.tee.nsm\nimport onnxruntime",  # a stage enclave
        "import serdab.kms.enclave",  # the key service enclave
        # a model-serving enclave, decoding seed 001's images (Pillow) and serving metrics
        "import serdab.serve.replica as r, serdab.serve.protocol as p, serdab.kms.client, serdab.tee.nsm\n"
        "import onnxruntime, PIL.Image\np.decode_images",
        "import serdab.serve.stress",  # the EPC interference enclave
    ],
)
def test_the_runtime_measurement_lists_every_package_an_enclave_loads(code: str) -> None:
    import importlib.metadata as metadata
    import re

    from serdab.tee.image import runtime_packages

    measured = {name for name, _ in runtime_packages()}
    owners = metadata.packages_distributions()
    loaded = {re.sub(r"[-_.]+", "-", d).lower() for m in _loaded(code) for d in owners.get(m, [])}
    # serdab itself is measured by its source digest; setuptools only by the venv's _distutils_hack .pth
    assert loaded - measured - {"serdab", "setuptools"} == set()
