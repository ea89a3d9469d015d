"""Benchmarks for jax_fa3 (``python -m benchmarks.attention``)."""
