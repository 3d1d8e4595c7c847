"""Shared fixtures: one export cache and one Serdab home per test session, chains opened once per model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serdab.graph import Chain, open_chain


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # CI points SERDAB_CACHE_DIR at the clone; otherwise keep tests off the user's cache.
    if "SERDAB_CACHE_DIR" not in os.environ:
        os.environ["SERDAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("serdab-cache"))
    # simulated TEE host identity, KMS data and images: never the user's ~/.serdab
    os.environ["SERDAB_HOME"] = str(tmp_path_factory.mktemp("serdab-home"))


_CHAINS: dict[str, Chain] = {}


def chain_of(name: str) -> Chain:
    """Open a zoo model once per test session (VGG16 takes seconds to export and bind)."""
    if name not in _CHAINS:
        _CHAINS[name] = open_chain(name).chain
    return _CHAINS[name]


@pytest.fixture
def lenet() -> Chain:
    return chain_of("lenet5")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def resnet18_profile():
    """A quick (3-run) ResNet18 profile: planners need realistic shapes, not precise times."""
    from serdab.profile import profile_chain

    return profile_chain(chain_of("resnet18"), "resnet18", repeat=3, warmup=1)


@pytest.fixture
def clusters_dir(repo_root: Path) -> Path:
    return repo_root / "examples" / "clusters"
