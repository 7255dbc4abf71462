"""Helpers of benchmarks/bench.py: processes and mounts, the nginx origin, tools, scenarios and the report."""
