"""Spectral analysis of trained models' transitions (issue 13): ``python -m benchmarks.spectrum.run``."""
