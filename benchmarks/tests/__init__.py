"""Tests of the benchmarks (run as their own CI step: ``python -m pytest -q benchmarks/tests``)."""
