"""Experiments and benchmarks of hf_lrnn, outside the library: run each as ``python -m benchmarks.<group>.<name>``
from the repository root (see benchmarks/README.md)."""
