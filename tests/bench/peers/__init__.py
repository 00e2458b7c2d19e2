"""Benchmarks against the tools users would pick instead: ``python -m tests.bench.peers``."""
