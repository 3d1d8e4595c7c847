"""Devices and links a placement can use, read from a validated YAML file."""

from serdab.cluster.spec import EXAMPLES_DIR, Cluster, Device, Link, LocalLink, load_cluster, resolve_cluster
from serdab.cluster.units import parse_bandwidth_bytes_per_s, parse_bytes, parse_seconds

__all__ = [
    "EXAMPLES_DIR",
    "Cluster",
    "Device",
    "Link",
    "LocalLink",
    "load_cluster",
    "resolve_cluster",
    "parse_bandwidth_bytes_per_s",
    "parse_bytes",
    "parse_seconds",
]
