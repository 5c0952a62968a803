"""Diagnostics and benchmarks run from a checkout (`python -m benchmarks.<name>`); not installed."""
