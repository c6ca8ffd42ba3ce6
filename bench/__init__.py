"""Benchmarks against the peers (bench/run.py) and of single promises (cache_rebuild.py, parallel_stages.py)."""
