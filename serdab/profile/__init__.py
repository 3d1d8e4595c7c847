"""Per-block cost of a model on this host: latency, bytes out, resolution, MACs, weights, activations."""

from serdab.profile.cache import cached_profile, profile_cache_path, read_cached, write_cached
from serdab.profile.profiler import BlockProfile, Profile, ProfileFileError, profile_chain

__all__ = [
    "BlockProfile",
    "Profile",
    "ProfileFileError",
    "profile_cache_path",
    "profile_chain",
    "read_cached",
    "cached_profile",
    "write_cached",
]
