"""Benchmarks: each ``bench_*.py`` is one command that prints a table (or ``--json``)."""
