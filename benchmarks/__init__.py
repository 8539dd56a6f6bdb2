"""Benchmarks: ``python -m benchmarks.<name>``; each module exposes ``run(quick=False) -> list[dict]``."""
