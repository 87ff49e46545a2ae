"""Scan-kernel benchmarks: Triton timings, launch tuning, the GPU error check, the torch-scan timings."""
