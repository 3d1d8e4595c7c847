"""Profiles cached as JSON, keyed by the model bytes and every setting that changes the timings."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnxruntime as ort

from serdab.graph.chain import Chain
from serdab.models import cache_dir
from serdab.profile.profiler import Profile, ProfileFileError, Progress, profile_chain

__all__ = ["cached_profile", "profile_cache_path", "read_cached", "write_cached"]

_FORMAT = "2"  # bump when block naming or profile fields change, so stale caches are re-measured


def profile_cache_path(chain: Chain, model_name: str, **settings: object) -> Path:
    digest = hashlib.sha256(chain.model.SerializeToString(deterministic=True))
    digest.update(repr(sorted(settings.items())).encode())
    digest.update(f"{ort.__version__}:{_FORMAT}".encode())
    return cache_dir() / "profiles" / f"{model_name}-{digest.hexdigest()[:16]}.json"


def read_cached(path: Path) -> Profile | None:
    """The cached profile, or None when absent or unreadable (a corrupt cache is just re-measured)."""
    if not path.exists():
        return None
    try:
        return Profile.load(path)
    except ProfileFileError:
        return None


def write_cached(path: Path, profile: Profile) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    profile.save(tmp)
    tmp.replace(path)


def cached_profile(
    chain: Chain,
    model_name: str,
    *,
    repeat: int = 30,
    warmup: int = 5,
    threads: int = 1,
    refresh: bool = False,
    progress: Progress | None = None,
) -> tuple[Profile, Path | None]:
    """The profile from the cache when present (and its path), else measured now and cached (path None)."""
    path = profile_cache_path(chain, model_name, repeat=repeat, warmup=warmup, threads=threads)
    cached = None if refresh else read_cached(path)
    if cached is not None:
        return cached, path
    profile = profile_chain(chain, model_name, repeat=repeat, warmup=warmup, threads=threads, progress=progress)
    write_cached(path, profile)
    return profile, None
