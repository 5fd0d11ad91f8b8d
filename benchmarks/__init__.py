"""Benchmarks and drills (each runnable as `python benchmarks/<name>.py`); tests import the drills."""
