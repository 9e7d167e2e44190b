"""Benchmarks own the side-by-side measurements: `make bench` (benchmarks.bench) and its baselines."""
