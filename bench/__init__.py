"""Benchmarks of the exporter core (not part of the installed package). See docs/benchmarks.md."""
