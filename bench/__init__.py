"""Benchmark helpers for `python -m perpwatch.bench` (see BENCHMARKS.md). Not imported at runtime."""
