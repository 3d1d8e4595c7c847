"""Benchmarks (never unit tests): each writes a JSON result and a PNG plot under bench/results/."""
