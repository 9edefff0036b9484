"""Benchmarks: each prints its figures beside a same-run baseline."""
