"""Human units in cluster files: sizes (93MiB), bandwidths (100Mbit) and durations (5ms).

Everything is converted once, at load time, to bytes, bytes per second and seconds, so the
planners never see a unit string. A bare number is already in the base unit.
"""

from __future__ import annotations

import re

__all__ = ["parse_bandwidth_bytes_per_s", "parse_bytes", "parse_seconds"]

_NUMBER = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"

_SIZE = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_RATE = {  # per second, in bytes
    "": 1,
    "b/s": 1,
    "bps": 1 / 8,
    "bit": 1 / 8,
    "bit/s": 1 / 8,
    "kbit": 1e3 / 8,
    "kbps": 1e3 / 8,
    "kbit/s": 1e3 / 8,
    "kb/s": 1e3,
    "mbit": 1e6 / 8,
    "mbps": 1e6 / 8,
    "mbit/s": 1e6 / 8,
    "mb/s": 1e6,
    "gbit": 1e9 / 8,
    "gbps": 1e9 / 8,
    "gbit/s": 1e9 / 8,
    "gb/s": 1e9,
}
_TIME = {"": 1, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _parse(value: object, table: dict[str, float], example: str, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a {what} like {example}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = re.fullmatch(_NUMBER + r"([a-zA-Zµ/]*)\s*", str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in table:
            raise ValueError(f"{value!r} is not a {what} like {example}")
        number = float(match.group(1)) * table[unit]
    if number < 0:
        raise ValueError(f"{value!r} is negative; a {what} is >= 0, e.g. {example}")
    return number


def parse_bytes(value: object) -> int:
    """'93MiB' -> 97517568 (MiB/GiB binary, MB/GB decimal)."""
    return int(_parse(value, _SIZE, "93MiB or 16GiB", "size"))


def parse_bandwidth_bytes_per_s(value: object) -> float:
    """'100Mbit' -> 12.5e6 bytes per second (bit units: Mbit, Mbps; byte units: MB/s)."""
    return _parse(value, _RATE, "100Mbit or 1Gbit or 12.5MB/s", "bandwidth")


def parse_seconds(value: object) -> float:
    """'5ms' -> 0.005."""
    return _parse(value, _TIME, "5ms or 0.2s", "duration")
