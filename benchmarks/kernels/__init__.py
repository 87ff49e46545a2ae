"""Scan-kernel benchmarks: Triton timings, the GPU error check, the torch-scan timings."""
