"""Benchmarks: ``python -m benchmarks.<name> [--quick]`` writes ``benchmarks/results/<name>.{json,md}``."""
