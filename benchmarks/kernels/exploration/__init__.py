"""Scripts of the kernel explorations whose logs are in benchmarks/results/exploration/."""
